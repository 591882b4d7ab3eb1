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

__all__ = [
    "RAW_IMAGE_TYPES",
    "raw_body_openapi",
    "too_many_files",
    "too_many_pixels",
    "upload_bytes",
]

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


def too_many_pixels(pixels: int, limit: int, files: int) -> ApiError:
    """The error for a request whose images hold more pixels in all than one request may."""
    return ApiError(
        413,
        "too_many_pixels",
        f"The {files} images of this request hold {pixels:,} pixels in all (width × height, "
        f"summed); at most {limit:,} are decoded per request. Send fewer or smaller images "
        "per request: split the batch, or resize the images.",
        details={"pixels": pixels, "max_request_pixels": limit, "files": files},
    )


def too_many_files(count: int | None, limit: int) -> ApiError:
    """The error for a batch with more files than allowed."""
    sent = f"{count} files were sent; " if count is not None else ""
    return ApiError(
        413,
        "too_many_files",
        f"Too many files in one batch: {sent}at most {limit} are accepted. "
        "Split the images over several requests.",
        details={"max_files": limit, **({"files": count} if count is not None else {})},
    )
