"""Request bodies for the service: PNG digits and multipart uploads of them."""

from __future__ import annotations

import io
import uuid

import numpy as np
import numpy.typing as npt
from PIL import Image

from harness.mnist import mnist_dir, read_test_set
from training.data import MnistError

__all__ = ["digit_images", "multipart", "png"]


def digit_images(count: int) -> tuple[npt.NDArray[np.uint8], str]:
    """``count`` 28×28 white-on-black digits and what they are: MNIST test images (see
    :func:`harness.mnist.mnist_dir`), or synthetic strokes where MNIST is not available."""
    directory = mnist_dir()
    if directory is not None:
        try:
            return read_test_set(directory)[0][:count], "MNIST test images"
        except MnistError:
            pass
    rng = np.random.default_rng(0)
    synthetic = np.zeros((count, 28, 28), np.uint8)
    for image in synthetic:
        top, left = rng.integers(4, 12, size=2)
        image[top : top + 12, left : left + 3] = 255
        image[top : top + 3, left : left + 10] = 220
    return synthetic, "synthetic strokes (MNIST_DATA_DIR not set)"


def png(image: npt.NDArray[np.uint8]) -> bytes:
    """PNG bytes of a uint8 grayscale image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(field_name: str, files: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one part per file, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for index, data in enumerate(files):
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{field_name}"; '
                f'filename="digit-{index}.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
