"""An uploaded image: a multipart field, or the request's body itself.

``/predict`` and ``/recognize`` take the image either way. As a raw body (``curl --data-binary
@digit.png -H 'Content-Type: image/png'``), as model servers take their inputs, no multipart
parsing is done: the body is the image, bounded by the same upload limit
(``DIGITS_MAX_UPLOAD_BYTES``, enforced as the body streams in) and checked by the same decoder.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import Request, UploadFile

from app.core.errors import ApiError

__all__ = ["RAW_IMAGE_TYPES", "raw_body_openapi", "upload_bytes"]

#: Content types taken as a raw image body (the decoder checks what the bytes really are).
RAW_IMAGE_TYPES: Final = (
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/gif",
    "image/webp",
    "application/octet-stream",
)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def upload_bytes(request: Request, file: UploadFile | None, field: str) -> bytes:
    """The image's bytes: the multipart ``field`` when sent, else the raw body of an image type.

    Raises:
        ApiError: 422 ``invalid_request`` when neither was sent.
    """
    if file is not None:
        return await file.read()
    if _media_type(request) in RAW_IMAGE_TYPES:
        return await request.body()
    raise ApiError(
        422,
        "invalid_request",
        f"Send the image as the multipart/form-data field '{field}', or as the request body "
        f"with an image Content-Type ({', '.join(RAW_IMAGE_TYPES[:-1])}).",
        details={"content_type": _media_type(request) or None},
    )


def raw_body_openapi(description: str) -> dict[str, Any]:
    """The ``openapi_extra`` that documents the raw-body form beside the multipart one."""
    binary = {"schema": {"type": "string", "format": "binary", "description": description}}
    return {"requestBody": {"required": True, "content": dict.fromkeys(RAW_IMAGE_TYPES, binary)}}
