"""How one image file becomes a uint8 array of the model's size: the one policy that
training on a folder (`ldjax.data.folder`), tfds's Imagenette and `ldjax.predict` share.

Decoding is Pillow's: any file Pillow opens (JPEG, PNG, BMP, WebP, TIFF, GIF's
first frame, ...). The steps, in order:

1. EXIF orientation is applied (`ImageOps.exif_transpose`), so a photo taken
   sideways is seen upright, as a viewer shows it.
2. Mode: 16- and 32-bit grey (``I;16``, ``I``) is scaled to 8 bits (/257),
   float grey (``F``) clipped to 0..255; palette images are expanded; alpha is
   dropped (as torchvision's ``ImageFolder`` loader does); then ``L`` for one
   channel, ``RGB`` (ITU-R 601 luma for grey from colour) for three.
3. Size (`POLICY`, "shorter side, then centre crop"): the image is scaled,
   keeping its aspect ratio, so that it just covers H x W, with Pillow's
   antialiased bilinear filter, and the central H x W is kept: torchvision's
   evaluation transform ``Resize(S) + CenterCrop(S)`` for a square S x S.
   Images are scaled down or up, but one that would have to be enlarged more
   than `MAX_ENLARGE` times (a side under half of H or W) is refused as too
   small (`TooSmall`): it holds too little of what the model sees. A JPEG much larger than the target is decoded at a reduced DCT
   scale first (Pillow's ``draft``, as ``thumbnail`` does), still at least
   the covering size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps

POLICY = "shorter-side-center-crop"
MAX_ENLARGE = 2.0
# Modes whose pixels are grey levels (for the default channel count).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_EXIF_ORIENTATION = 0x0112
# Orientations 5-8 turn the image by 90 degrees: its width and height swap.
_SWAPPED = frozenset({5, 6, 7, 8})


class BadImage(ValueError):
  """A file with an image suffix that Pillow cannot read (corrupt, truncated)."""


class TooSmall(ValueError):
  """An image smaller than the size asked, on one side or both."""


@functools.cache
def image_suffixes() -> frozenset[str]:
  """The file suffixes (lower case, with the dot) of the formats Pillow can open."""
  PIL.Image.init()
  return frozenset(ext for ext, fmt in PIL.Image.registered_extensions().items()
                   if fmt in PIL.Image.OPEN)


def is_image_name(path: str | os.PathLike) -> bool:
  """Whether a file's name says it is an image Pillow opens (hidden files never are)."""
  name = os.path.basename(os.fspath(path))
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in image_suffixes()


@dataclasses.dataclass(frozen=True)
class Header:
  """What an image's header says: its upright size (after EXIF orientation) and mode."""
  width: int
  height: int
  mode: str

  @property
  def grey(self) -> bool:
    return self.mode in GREY_MODES


def _open(path) -> PIL.Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")   # DecompressionBombWarning, palette transparency
      return PIL.Image.open(path)
  except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
    raise BadImage(_reason(e)) from None


def _reason(e: BaseException) -> str:
  text = str(e).splitlines()[0] if str(e) else ""
  return text or type(e).__name__


def _orientation(im: PIL.Image.Image) -> int:
  try:
    return int(im.getexif().get(_EXIF_ORIENTATION, 1))
  except Exception:   # pylint: disable=broad-except  # a garbled EXIF block: no rotation
    return 1


def _header(im: PIL.Image.Image) -> Header:
  w, h = im.size
  return Header(*((h, w) if _orientation(im) in _SWAPPED else (w, h)), im.mode)


def read_header(path: str | os.PathLike) -> Header:
  """Size and mode from the header alone (fast: the pixels are not decoded); BadImage if
  Pillow cannot identify the file."""
  with _open(path) as im:
    return _header(im)


def covering_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
  """(w, h) of a `width` x `height` image scaled, aspect kept, to just cover `size` (H, W)."""
  target_h, target_w = size
  scale = max(target_h / height, target_w / width)
  return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def check_size(header: Header, size: tuple[int, int]) -> None:
  """TooSmall if covering `size` (H, W) would enlarge the image more than MAX_ENLARGE times."""
  if header.height * MAX_ENLARGE < size[0] or header.width * MAX_ENLARGE < size[1]:
    raise TooSmall(f"is {header.width}x{header.height} (W x H), too small for "
                   f"{size[0]}x{size[1]} (H x W): it would be enlarged more than "
                   f"{MAX_ENLARGE:g} times")


def load_image(path: str | os.PathLike, size: tuple[int, int], channels: int) -> np.ndarray:
  """uint8 [H, W, channels] of an image file by the module's policy.

  Raises BadImage (unreadable, corrupt or truncated file) or TooSmall."""
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  im = _open(path)
  try:
    with im, warnings.catch_warnings():
      warnings.simplefilter("ignore")
      im.seek(0)   # a GIF's or a TIFF's first frame
      header = _header(im)
      check_size(header, size)
      if im.format == "JPEG":   # decode at a reduced scale that still covers the target
        stored = size if _orientation(im) not in _SWAPPED else (size[1], size[0])
        im.draft(im.mode, covering_size(im.size[0], im.size[1], stored))
      im.load()
      out = to_channels(PIL.ImageOps.exif_transpose(im), channels)
  except (TooSmall, BadImage):
    raise
  except (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError) as e:
    raise BadImage(_reason(e)) from None
  return fit(out, size)


def to_channels(im: PIL.Image.Image, channels: int) -> PIL.Image.Image:
  """`im` as 8-bit ``L`` (channels 1) or ``RGB`` (3); see the module doc for the modes."""
  if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    a = np.asarray(im)
    a = (np.clip(a, 0, 255) if im.mode == "F"
         else np.clip(np.round(a.astype(np.float64) / 257.0), 0, 255))
    im = PIL.Image.fromarray(a.astype(np.uint8), "L")
  elif im.mode in ("P", "PA"):
    im = im.convert("RGBA")
  if channels == 1:
    return im if im.mode == "L" else im.convert("L")
  return im if im.mode == "RGB" else im.convert("RGB")


def fit(im: PIL.Image.Image, size: tuple[int, int]) -> np.ndarray:
  """uint8 [H, W, C] of an L or RGB image: scaled to cover `size` (H, W), centre-cropped."""
  w, h = im.size
  new_w, new_h = covering_size(w, h, size)
  if (new_w, new_h) != (w, h):
    im = im.resize((new_w, new_h), PIL.Image.Resampling.BILINEAR)
  top, left = (new_h - size[0]) // 2, (new_w - size[1]) // 2
  if (new_w, new_h) != (size[1], size[0]):
    im = im.crop((left, top, left + size[1], top + size[0]))
  a = np.asarray(im, np.uint8)
  return a.reshape(size[0], size[1], -1)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The policy on a decoded uint8 [H, W, C] array (C 1 or 3), to size x size."""
  h, w, c = image.shape
  pil = PIL.Image.fromarray(image.squeeze(-1) if c == 1 else image)
  return fit(pil, (size, size)).reshape(size, size, c)
