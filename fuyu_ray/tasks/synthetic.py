"""What the built-in synthetic rows are drawn from.

Small, closed vocabularies so that the built-in tiny model can learn them in a couple of
minutes; each task's rows test what its name says (reading, naming a colour or shape,
describing), in that task's real schema.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

EVAL_SPLIT = "eval"
TRAIN_SPLIT = "train"

WORDS = ("cat", "sun", "tree", "boat", "milk", "star", "road", "fish")
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (10, 10, 10)}
CANVAS = 224


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_word(word: str) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    letters = font(64)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=letters)
    draw.text(
        ((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top), word, font=letters, fill=(0, 0, 0)
    )
    return image


def draw_shape(shape: str, color: tuple[int, int, int], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), background)
    draw = ImageDraw.Draw(image)
    box = (42, 42, CANVAS - 42, CANVAS - 42)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(CANVAS / 2, 42), (CANVAS - 42, CANVAS - 42), (42, CANVAS - 42)], fill=color)
    return image
