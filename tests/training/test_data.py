"""The MNIST loader: real data, and tiny synthetic IDX files that are right or wrong in one way."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from tests.training.synthetic import SyntheticDataset, idx_payload, write_gz
from training.data import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MNIST,
    MnistData,
    MnistFileError,
    load_mnist,
    read_idx,
    resolve_data_dir,
)

# Published in the dataset's README (../shared/data/mnist/README.md).
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# -- the real dataset ---------------------------------------------------------------------------


def test_real_mnist_shapes_and_types(mnist: MnistData) -> None:
    assert mnist.train_images.shape == (60_000, 28, 28)
    assert mnist.train_labels.shape == (60_000,)
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert mnist.test_labels.shape == (10_000,)
    for array in (mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels):
        assert array.dtype == np.uint8
    assert mnist.source == "directory"
    assert mnist.digests == {f.name: f.sha256 for f in MNIST.files}


def test_real_mnist_class_counts_match_the_readme(mnist: MnistData) -> None:
    assert np.bincount(mnist.train_labels, minlength=10).tolist() == TRAIN_CLASS_COUNTS
    assert np.bincount(mnist.test_labels, minlength=10).tolist() == TEST_CLASS_COUNTS


def test_real_mnist_polarity_and_first_training_digit(mnist: MnistData) -> None:
    # White ink on black: the border is background and the maximum is full ink.
    assert mnist.test_images[:, 0, :].max() == 0
    assert mnist.train_images.max() == 255
    assert mnist.train_labels[0] == 5  # the well-known first training digit


# -- data directory precedence ------------------------------------------------------------------


def test_data_dir_flag_overrides_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir(tmp_path / "from-flag") == tmp_path / "from-flag"
    assert resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert resolve_data_dir(None) is None


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(MnistFileError, match="does not exist"):
        load_mnist(tmp_path / "nowhere", progress=False)


# -- synthetic files ----------------------------------------------------------------------------


def test_synthetic_dataset_loads_exactly(synthetic: SyntheticDataset) -> None:
    data = load_mnist(synthetic.directory, spec=synthetic.spec, progress=False)
    np.testing.assert_array_equal(data.train_images, synthetic.data.train_images)
    np.testing.assert_array_equal(data.train_labels, synthetic.data.train_labels)
    np.testing.assert_array_equal(data.test_images, synthetic.data.test_images)
    np.testing.assert_array_equal(data.test_labels, synthetic.data.test_labels)


def test_the_real_spec_rejects_synthetic_files(synthetic: SyntheticDataset) -> None:
    # The default spec is MNIST's: tiny files must fail, naming the first file checked.
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte\.gz"):
        load_mnist(synthetic.directory, progress=False)


def test_missing_file_is_named(synthetic: SyntheticDataset) -> None:
    (synthetic.directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistFileError, match=r"t10k-labels-idx1-ubyte\.gz.*not found"):
        load_mnist(synthetic.directory, spec=synthetic.spec, progress=False)


def test_truncated_gzip_stream(synthetic: SyntheticDataset) -> None:
    path = synthetic.directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        read_idx(path, synthetic.spec.train_images)


def test_truncated_payload_in_a_valid_gzip(synthetic: SyntheticDataset) -> None:
    path = synthetic.directory / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    write_gz(path, payload[:-100])
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte\.gz: truncated"):
        read_idx(path, synthetic.spec.train_images)


def test_extra_bytes_after_the_data(synthetic: SyntheticDataset) -> None:
    path = synthetic.directory / "train-labels-idx1-ubyte.gz"
    write_gz(path, gzip.decompress(path.read_bytes()) + b"\x00")
    with pytest.raises(MnistFileError, match="unexpected bytes"):
        read_idx(path, synthetic.spec.train_labels)


def test_wrong_magic_number(synthetic: SyntheticDataset) -> None:
    # A labels file where images are expected: the classic swapped-files mistake.
    path = synthetic.directory / "train-images-idx3-ubyte.gz"
    path.write_bytes((synthetic.directory / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte\.gz: bad magic number 2049"):
        read_idx(path, synthetic.spec.train_images)


def test_wrong_count(synthetic: SyntheticDataset) -> None:
    expected = synthetic.spec.test_labels
    path = synthetic.directory / expected.name
    write_gz(path, idx_payload(np.zeros(expected.shape[0] + 1, np.uint8), LABELS_MAGIC))
    with pytest.raises(MnistFileError, match="wrong count/shape"):
        read_idx(path, expected)


def test_wrong_image_shape(synthetic: SyntheticDataset) -> None:
    expected = synthetic.spec.test_images
    path = synthetic.directory / expected.name
    write_gz(path, idx_payload(np.zeros((expected.shape[0], 28, 27), np.uint8), IMAGES_MAGIC))
    with pytest.raises(MnistFileError, match="wrong count/shape"):
        read_idx(path, expected)


def test_wrong_digest_one_flipped_pixel(synthetic: SyntheticDataset) -> None:
    expected = synthetic.spec.test_images
    path = synthetic.directory / expected.name
    images = synthetic.data.test_images.copy()
    images[0, 14, 14] ^= 1
    write_gz(path, idx_payload(images, IMAGES_MAGIC))
    with pytest.raises(MnistFileError, match=r"t10k-images-idx3-ubyte\.gz: wrong SHA-256"):
        read_idx(path, expected)


def test_digest_is_checked_against_the_spec(synthetic: SyntheticDataset) -> None:
    wrong = dataclasses.replace(synthetic.spec.train_labels, sha256="0" * 64)
    with pytest.raises(MnistFileError, match="wrong SHA-256"):
        read_idx(synthetic.directory / wrong.name, wrong)


def test_not_gzip(synthetic: SyntheticDataset) -> None:
    path = synthetic.directory / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))  # the raw IDX, not compressed
    with pytest.raises(MnistFileError, match=r"train-labels-idx1-ubyte\.gz: not a gzip file"):
        read_idx(path, synthetic.spec.train_labels)


def test_shorter_than_a_header(synthetic: SyntheticDataset) -> None:
    path = write_gz(synthetic.directory / "train-labels-idx1-ubyte.gz", b"\x00\x00")
    with pytest.raises(MnistFileError, match=r"truncated.*header"):
        read_idx(path, synthetic.spec.train_labels)
