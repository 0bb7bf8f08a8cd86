"""runners/checks.py: the plan's checks on output paths (the others run through tests/test_cli.py)."""
import pytest
from PIL import Image

from runners.checks import _check_apart
from runners.errors import InputError


def test_output_folder_apart_from_a_dataset_folder(tmp_path):
    (tmp_path / "ds").mkdir()
    _check_apart(tmp_path / "exp" / "image_samples" / "run", tmp_path / "ds")
    for out in (tmp_path / "ds", tmp_path / "ds" / "run", tmp_path):   # the folder, inside it, around it
        with pytest.raises(InputError, match="overlap"):
            _check_apart(out, tmp_path / "ds")


def test_output_folder_apart_from_one_image_file(tmp_path):
    """A single image is read alone: outputs may sit below its folder (exp/ beside a photo), but not
    in that folder or around it, where they could overwrite it."""
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    Image.new("RGB", (4, 4)).save(photo)
    _check_apart(tmp_path / "photos" / "exp" / "image_samples" / "run", photo)
    _check_apart(tmp_path / "elsewhere", photo)
    for out in (tmp_path / "photos", tmp_path):
        with pytest.raises(InputError, match="overlap"):
            _check_apart(out, photo)
