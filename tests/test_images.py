"""Every kind of image file a user may bring: decoded the same way, or refused with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from captionkit.data import image_files
from captionkit.data.image_files import ImageTooLarge, load_image
from captionkit.data.problems import Problems

RED = (200, 30, 30)


def solid(mode_color=RED, size=(32, 24)) -> Image.Image:
    return Image.new("RGB", size, mode_color)


def test_png_with_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (200, 30, 30, 0))  # fully transparent red
    rgba.putpixel((0, 0), (200, 30, 30, 255))
    rgba.save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == RED and im.getpixel((5, 5)) == (255, 255, 255)


def test_palette_png_with_transparency(tmp_path):
    pal = solid().convert("P", palette=Image.ADAPTIVE, colors=4)
    pal.info["transparency"] = 255  # an index no pixel uses: the image stays opaque
    pal.save(tmp_path / "p.png", transparency=255)
    im = load_image(tmp_path / "p.png")
    assert im.mode == "RGB" and im.getpixel((3, 3)) == RED


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    grey16 = Image.fromarray(np.full((10, 10), 32768, dtype=np.uint16))
    grey16.save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    r, g, b = load_image(tmp_path / "g16.png").getpixel((2, 2))
    assert r == g == b and 120 <= r <= 135  # half of full scale, not clipped to 255


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs(tmp_path, mode):
    solid().convert(mode).save(tmp_path / "x.jpg", quality=95)
    im = load_image(tmp_path / "x.jpg")
    assert im.mode == "RGB" and im.size == (32, 24)
    if mode == "CMYK":
        assert np.allclose(im.getpixel((10, 10)), RED, atol=12)


def test_exif_rotation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    solid(size=(40, 20)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert Image.open(tmp_path / "r.jpg").size == (40, 20)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    solid(size=(100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageTooLarge, match="100x100 pixels is over the limit of 5000"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    monkeypatch.setattr(image_files, "MAX_PIXELS", 5000)
    with pytest.raises(ImageTooLarge):
        load_image(tmp_path / "big.png")


def broken_files(tmp_path):
    buf = io.BytesIO()
    solid(size=(64, 64)).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a picture")
    return ["truncated.jpg", "empty.jpg", "text.jpg"]


def test_broken_files_raise_errors_that_the_store_can_report(tmp_path):
    for name in broken_files(tmp_path):
        with pytest.raises((OSError, ValueError)):
            load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")


def test_problems_are_counted_capped_and_strict(capsys, tmp_path):
    problems = Problems(max_printed=2)
    for i in range(5):
        problems.add("unreadable_image", f"img{i}.jpg", "cannot read image")
    problems.add("truncated_caption", "captions.txt:3", "cut to 20 words")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: img0.jpg: cannot read image; skipped",
        "warning: img1.jpg: cannot read image; skipped",
    ]
    assert problems.counts() == {"unreadable_image": 5, "truncated_caption": 1}
    assert problems.summary() == "problems: 1 truncated_caption, 5 unreadable_image"
    problems.write(tmp_path / "problems.json")
    assert '"img4.jpg"' in (tmp_path / "problems.json").read_text()
    from captionkit.errors import CaptionkitError

    with pytest.raises(CaptionkitError, match="img9.jpg: cannot read image"):
        Problems(strict=True).add("unreadable_image", "img9.jpg", "cannot read image")
