"""Pixel work around a generation: fitting an init image to the requested size, and the masks,
crops and paste-backs of inpainting. Pure functions on PIL images."""

from PIL import Image, ImageFilter, ImageOps

JUST_RESIZE = "just-resize"          # stretch to the size (A1111 resize_mode 0)
CROP_AND_RESIZE = "crop-and-resize"  # fill the size, cut what sticks out (1)
RESIZE_AND_FILL = "resize-and-fill"  # fit inside, fill the borders with stretched edges (2)
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)


def resized(image: Image.Image, size: tuple[int, int], mode: str = JUST_RESIZE) -> Image.Image:
    """`image` at exactly `size`, by one of A1111's resize modes."""
    if image.size == size:
        return image
    if mode == CROP_AND_RESIZE:
        return ImageOps.fit(image, size, Image.LANCZOS)
    if mode == RESIZE_AND_FILL:
        return _resized_and_filled(image, size)
    return image.resize(size, Image.LANCZOS)


def _resized_and_filled(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # The borders continue the picture's own edge colours, as A1111 does, so the model has
    # something plausible to build on instead of flat black.
    inner = ImageOps.contain(image, size, Image.LANCZOS)
    canvas = image.resize(size, Image.LANCZOS).filter(ImageFilter.GaussianBlur(max(size) / 16))
    canvas.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
    return canvas


def blurred_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A soft-edged mask (L), so the regenerated area blends into the picture."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def masked_box(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int] | None:
    """The region around the mask's painted pixels, padded and widened to the output's aspect
    ratio, clipped to the image; None for an empty mask."""
    box = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    left, top, right, bottom = box[0] - padding, box[1] - padding, box[2] + padding, box[3] + padding
    width, height = right - left, bottom - top
    if width / height < aspect:
        grow = round(height * aspect) - width
        left, right = left - grow // 2, right + grow - grow // 2
    else:
        grow = round(width / aspect) - height
        top, bottom = top - grow // 2, bottom + grow - grow // 2
    return _clipped((left, top, right, bottom), mask.size)


def _clipped(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    if right - left > size[0]:
        left, right = 0, size[0]
    if bottom - top > size[1]:
        top, bottom = 0, size[1]
    shift_x = max(0, -left) - max(0, right - size[0])
    shift_y = max(0, -top) - max(0, bottom - size[1])
    return left + shift_x, top + shift_y, right + shift_x, bottom + shift_y


def composited(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated picture where the mask is painted, the original everywhere else."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L").resize(original.size))


def pasted_back(
    original: Image.Image, generated: Image.Image, box: tuple[int, int, int, int], mask: Image.Image
) -> Image.Image:
    """A crop that was generated at another size, scaled back into its box and blended by the mask."""
    patch = generated.resize((box[2] - box[0], box[3] - box[1]), Image.LANCZOS)
    placed = original.convert("RGB").copy()
    placed.paste(patch, box[:2])
    return composited(original, placed, mask)


def mask_from_layer(layer: Image.Image) -> Image.Image:
    """A painted editor layer as a mask (L): every stroke counts fully, whatever the brush's opacity."""
    alpha = layer.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value > 0 else 0)
