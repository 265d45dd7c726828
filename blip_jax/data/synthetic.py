"""The embedded default dataset: a small, learnable image-text world generated from a seed.

Scenes are 1-3 coloured shapes (circle, square, triangle, diamond in 6 colours, small or
large) placed in distinct cells of a 3x3 grid on a textured pastel background. Captions are
templated but varied (several phrasings, optional sizes/positions, counts for repeated
objects); questions ask about colour, shape, count, position and presence. Everything is
written in the real on-disk formats so every loader runs on it:

    {out}/images/web/web_000000123.jpg          noisy "web" split images
    {out}/images/coco/COCO_synth_000000000042.jpg  clean split images (COCO-style names)
    {out}/annotations/pretrain_web.json        BLIP pretraining list, web captions (noisy)
    {out}/annotations/pretrain_coco.json       BLIP pretraining list, the 5 clean captions
    {out}/annotations/web_noise.json           per web caption: is_noise, noise_type, clean_caption
    {out}/annotations/coco_karpathy_{train,val,test}.json
    {out}/annotations/vqa_{train,test}.json, vg_qa.json, answer_list.json
    {out}/shards/web-00000.tar ...              the web split as img2dataset webdataset shards (with
                                                img2dataset's web-00000_stats.json counts)
    {out}/corpus.txt                            every caption/question/answer, cleaned, one a line
    {out}/vocab.txt                             WordPiece vocab ([PAD]=0 [UNK] [CLS] [SEP] [MASK],
                                                characters and ##characters, then corpus words)
    {out}/scenes.json                           ground-truth objects per image
    {out}/manifest.json                         sizes, seed, counts, paths for configs

Image paths in the JSON files are relative to {out}/images (pass it as image_root).
The vocab covers every character, so WordPiece never needs [UNK] on this corpus; [DEC]/[ENC]
are not in it: the tokenizer appends them after the vocab, as BLIP does for BERT's.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import tarfile
import time

import numpy as np
from PIL import Image, ImageDraw

from blip_jax.data.text import pre_caption, pre_question
from blip_jax.files import write_json_atomic

COLORS = {"red": (215, 38, 38), "green": (34, 160, 60), "blue": (36, 84, 216),
          "yellow": (236, 204, 30), "purple": (136, 56, 176), "orange": (244, 132, 24)}
SHAPES = ("circle", "square", "triangle", "diamond")
SYNONYMS = {"circle": ("circle", "disc", "round shape"), "square": ("square", "box", "square"),
            "triangle": ("triangle", "triangle", "triangular shape"), "diamond": ("diamond", "rhombus", "diamond")}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
          "disc": "discs", "box": "boxes", "round shape": "round shapes", "triangular shape": "triangular shapes",
          "rhombus": "rhombuses"}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
NUMBERS = {1: "one", 2: "two", 3: "three"}
JUNK = ("IMG_{n}.jpg", "DSC0{n}", "click here to buy", "stock photo {n}", "untitled", "image",
        "free shipping on all orders", "best price guaranteed", "screenshot {n}", "photo by admin",
        "download now", "wallpaper hd {n}")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclasses.dataclass
class SyntheticConfig:
    seed: int = 0
    image_size: int = 128
    num_web: int = 3000
    num_coco_train: int = 800
    num_coco_val: int = 100
    num_coco_test: int = 100
    captions_per_image: int = 5
    noise_fraction: float = 0.4
    questions_per_image: int = 3
    vg_questions: int = 500  # VG-style QA (dataset "vg") on web images
    shard_size: int = 1000  # samples per webdataset shard
    jpeg_quality: int = 90
    num_corrupt: int = 0  # broken web images (zero-byte, truncated, garbage) to exercise skipping


# ---------------------------------------------------------------------------------------------
# Scenes


def sample_scene(rng: np.random.Generator) -> dict:
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    cells = rng.permutation(9)[:n]
    objects = []
    # Repeated objects make counting captions/questions meaningful.
    repeat = n > 1 and rng.random() < 0.35
    for k, cell in enumerate(cells):
        if repeat and k > 0 and rng.random() < 0.7:
            color, shape = objects[0]["color"], objects[0]["shape"]
        else:
            color = str(rng.choice(list(COLORS)))
            shape = str(rng.choice(SHAPES))
        objects.append({"shape": shape, "color": color, "size": str(rng.choice(["small", "large"])),
                        "row": ROWS[cell // 3], "col": COLS[cell % 3]})
    bg = tuple(int(v) for v in rng.integers(200, 250, 3))
    return {"objects": objects, "background": bg}


def render_scene(scene: dict, size: int, rng: np.random.Generator) -> Image.Image:
    s2 = size * 2  # draw at 2x and downsample: anti-aliased edges
    h = np.linspace(0, 1, s2, dtype=np.float32)[:, None, None]
    bg = np.asarray(scene["background"], np.float32)
    canvas = np.broadcast_to(bg * (0.92 + 0.08 * h), (s2, s2, 3))  # (2S, 2S, 3): vertical shading
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cell = s2 / 3
    for o in scene["objects"]:
        r = cell * (0.17 if o["size"] == "small" else 0.36) * float(rng.uniform(0.9, 1.1))
        cx = (COLS.index(o["col"]) + 0.5) * cell + float(rng.uniform(-0.08, 0.08)) * cell
        cy = (ROWS.index(o["row"]) + 0.5) * cell + float(rng.uniform(-0.08, 0.08)) * cell
        fill = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[o["color"]])
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif o["shape"] == "square":
            draw.rectangle((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.85), (cx + r, cy + r * 0.85)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), np.int16)
    noise = rng.integers(-4, 5, small.shape, dtype=np.int16)  # sensor-like texture
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8))


def position_phrases(row: str, col: str) -> tuple[str, ...]:
    """Every phrase a caption may use for the grid cell (row, col)."""
    if row == "middle" and col == "center":
        return ("in the center", "in the middle")
    if row == "middle":
        return (f"on the {col}", f"on the {col} side")
    if col == "center":
        return (f"at the {row}", f"near the {row}")
    return (f"in the {row} {col} corner", f"at the {row} {col}")


def position_phrase(o: dict, rng: np.random.Generator) -> str:
    return str(rng.choice(position_phrases(o["row"], o["col"])))


def _noun(shape: str, rng, plural: bool = False) -> str:
    word = str(rng.choice(SYNONYMS[shape]))
    return PLURAL[word] if plural else word


def object_groups(objects: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """A scene's objects by (colour, shape), in first-seen order: the groups a caption names."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for o in objects:
        groups.setdefault((o["color"], o["shape"]), []).append(o)
    return groups


def describe(scene: dict, rng: np.random.Generator, with_size: bool | None = None,
             with_pos: bool | None = None) -> str:
    """One varied, truthful caption of `scene`. ``with_size`` / ``with_pos`` force whether single
    objects get their size / position (by default each is drawn; the draws happen either way, so
    the rest of the phrasing follows the same rng stream)."""
    objs = scene["objects"]
    groups = object_groups(objs)
    drawn_size, drawn_pos = rng.random() < 0.5, rng.random() < 0.6
    with_size = drawn_size if with_size is None else with_size
    with_pos = drawn_pos if with_pos is None else with_pos
    parts = []
    for (color, shape), members in groups.items():
        if len(members) > 1:
            parts.append(f"{NUMBERS[len(members)]} {color} {_noun(shape, rng, plural=True)}")
            continue
        o = members[0]
        adj = f"{o['size']} " if with_size else ""
        phrase = f"{adj}{color} {_noun(shape, rng)}"
        phrase = ("an " if phrase[0] in "aeiou" else "a ") + phrase
        if with_pos:
            phrase += " " + position_phrase(o, rng)
        parts.append(phrase)
    order = rng.permutation(len(parts))
    parts = [parts[i] for i in order]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(objs)
    template = int(rng.integers(0, 6))
    if template == 0:
        return body
    if template == 1:
        return f"a picture of {body}"
    if template == 2:
        return f"{body} on a plain background"
    if template == 3:
        return f"an image with {NUMBERS[n]} shape{'s' if n > 1 else ''}: {body}"
    if template == 4:
        return f"there {'is' if n == 1 else 'are'} {body}"
    return f"a simple drawing of {body}."


# ---------------------------------------------------------------------------------------------
# Ground truth: does a caption describe a scene?
#
# The world's captions follow one grammar (`describe`): a template around a list of object
# groups, each "a/an [size] colour noun [position]" or "two/three colour nouns", naming every
# group of the scene. Parsing it back gives an exact check of any caption against any scene: of
# a model's generated captions (are they true?), and of the pairs ITM is trained on (is a
# "hard negative" really a mismatch?).

_WORDS = {v: k for k, v in NUMBERS.items()}
_NOUNS = {w: shape for shape, words in SYNONYMS.items() for w in words}
_PLURAL_NOUNS = {PLURAL[w]: shape for w, shape in _NOUNS.items()}
_CELLS = {phrase: (row, col) for row in ROWS for col in COLS for phrase in position_phrases(row, col)}


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOR = f"(?P<color>{_alternatives(COLORS)})"
_SINGLE = re.compile(rf"an? (?:(?P<size>small|large) )?{_COLOR} (?P<noun>{_alternatives(_NOUNS)})"
                     rf"(?: (?P<pos>{_alternatives(_CELLS)}))?")
_GROUP = re.compile(rf"(?P<count>{_alternatives(_WORDS)}) {_COLOR} (?P<nouns>{_alternatives(_PLURAL_NOUNS)})")
# (the template's shape count or None, the body), as `describe` writes them after pre_caption
_TEMPLATES = (re.compile(r"an image with (?P<n>one|two|three) shapes? (?P<body>.+)"),
              re.compile(r"a picture of (?P<body>.+)"), re.compile(r"a simple drawing of (?P<body>.+)"),
              re.compile(r"there (?:is|are) (?P<body>.+)"), re.compile(r"(?P<body>.+) on a plain background"),
              re.compile(r"(?P<body>.+)"))


def parse_caption(caption: str) -> dict | None:
    """A caption of this world -> {"objects": n or None, "groups": [{color, shape, count, size,
    cell}]} (size / cell None where the caption does not say), or None when it is not in the
    world's grammar (web junk, a garbled generation)."""
    text = pre_caption(caption)
    for template in _TEMPLATES:
        m = template.fullmatch(text)
        if m is None:
            continue
        groups = []
        for item in re.split(r", | and ", m["body"]):
            single, group = _SINGLE.fullmatch(item), _GROUP.fullmatch(item)
            if single:
                groups.append({"color": single["color"], "shape": _NOUNS[single["noun"]], "count": 1,
                               "size": single["size"], "cell": _CELLS.get(single["pos"])})
            elif group:
                groups.append({"color": group["color"], "shape": _PLURAL_NOUNS[group["nouns"]],
                               "count": _WORDS[group["count"]], "size": None, "cell": None})
            else:
                groups = None
                break
        if groups:
            return {"objects": _WORDS[m["n"]] if "n" in m.groupdict() else None, "groups": groups}
    return None


def caption_is_true(caption: str | dict | None, scene: dict) -> bool:
    """Whether ``caption`` (text, or `parse_caption`'s result) truly and completely describes
    ``scene``: the same (colour, shape) groups with the same counts, and every size and position
    it states right. Captions outside the grammar are not true of any scene."""
    parsed = parse_caption(caption) if isinstance(caption, str) else caption
    if parsed is None:
        return False
    objects = scene["objects"]
    if parsed["objects"] is not None and parsed["objects"] != len(objects):
        return False
    members = object_groups(objects)
    named = [(g["color"], g["shape"]) for g in parsed["groups"]]
    if len(set(named)) != len(named) or set(named) != set(members):
        return False
    for g in parsed["groups"]:
        group = members[(g["color"], g["shape"])]
        if g["count"] != len(group):
            return False
        if g["count"] == 1 and ((g["size"] and g["size"] != group[0]["size"])
                                or (g["cell"] and g["cell"] != (group[0]["row"], group[0]["col"]))):
            return False
    return True


ATTRIBUTES = ("color", "shape", "size", "position")


def swap_attribute(scene: dict, attribute: str, rng: np.random.Generator, index: int | None = None) -> dict | None:
    """`scene` with one object's ``attribute`` (one of ATTRIBUTES) changed, or None when no object
    can carry the change visibly in a caption (size and position are only stated for an object
    alone in its group). Colour and shape change on object ``index`` (default: drawn)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be one of {ATTRIBUTES}, got {attribute!r}")
    out = json.loads(json.dumps(scene))
    objs = out["objects"]
    if attribute in ("color", "shape"):
        o = objs[int(rng.integers(len(objs))) if index is None else index]
        pool = list(COLORS) if attribute == "color" else list(SHAPES)
        o[attribute] = str(rng.choice([v for v in pool if v != o[attribute]]))
        return out
    single = [g[0] for g in object_groups(objs).values() if len(g) == 1]
    if not single:
        return None
    o = single[int(rng.integers(len(single)))]
    if attribute == "size":
        o["size"] = "large" if o["size"] == "small" else "small"
        return out
    taken = {(p["row"], p["col"]) for p in objs}
    free = [(r, c) for r in ROWS for c in COLS if (r, c) not in taken]
    o["row"], o["col"] = free[int(rng.integers(len(free)))]
    return out


def corrupt_scene(scene: dict, rng: np.random.Generator) -> dict:
    """A copy with the colour or the shape of one object changed (for 'partially wrong' captions)."""
    index = int(rng.integers(len(scene["objects"])))
    return swap_attribute(scene, "color" if rng.random() < 0.5 else "shape", rng, index=index)


def junk_caption(rng: np.random.Generator) -> str:
    return str(rng.choice(JUNK)).format(n=int(rng.integers(100, 99999)))


def caption_checks(caption: str, scene: dict) -> dict[str, bool]:
    """What a caption gets right about a scene: ``in_grammar`` (parses), ``colors`` / ``shapes``
    (it names exactly the scene's colours / shapes), ``objects`` (exactly its (colour, shape)
    groups with their counts) and ``true`` (`caption_is_true`: all that, and every size and
    position it states)."""
    parsed = parse_caption(caption)
    if parsed is None:
        return dict.fromkeys(("in_grammar", "colors", "shapes", "objects", "true"), False)
    objects = scene["objects"]
    counts = {key: len(members) for key, members in object_groups(objects).items()}
    named: dict[tuple[str, str], int] = {}
    for g in parsed["groups"]:
        named[(g["color"], g["shape"])] = named.get((g["color"], g["shape"]), 0) + g["count"]
    return {"in_grammar": True,
            "colors": {g["color"] for g in parsed["groups"]} == {o["color"] for o in objects},
            "shapes": {g["shape"] for g in parsed["groups"]} == {o["shape"] for o in objects},
            "objects": named == counts,
            "true": caption_is_true(parsed, scene)}


def scene_truth_metrics(pairs) -> dict[str, float]:
    """(caption, scene) pairs -> the fraction of captions passing each of `caption_checks`, as
    ``<check>`` keys (``true_of_scene`` for ``true``), plus ``scene_checked`` (how many pairs)."""
    totals: dict[str, int] = {}
    n = 0
    for caption, scene in pairs:
        n += 1
        for k, v in caption_checks(caption, scene).items():
            totals[k] = totals.get(k, 0) + v
    out = {("true_of_scene" if k == "true" else k): v / n for k, v in totals.items()} if n else {}
    return {**out, "scene_checked": float(n)}


_WEB_FILE = re.compile(r"web/web_(\d{9})\.jpg")


def load_scenes(path: str) -> dict[str, dict]:
    """scenes.json -> {image path relative to images/: scene}, plus {shard key: scene} for the web
    images (their records carry the img2dataset key when read from the tar shards)."""
    with open(path, encoding="utf-8") as f:
        scenes = json.load(f)
    if not isinstance(scenes, dict):
        raise ValueError(f"{path}: expected {{image path: scene}}, got {type(scenes).__name__}")
    out = dict(scenes)
    for rel, scene in scenes.items():
        m = _WEB_FILE.fullmatch(rel)
        if m:
            out[_web_key(int(m[1]))] = scene
    return out


# ---------------------------------------------------------------------------------------------
# Questions


def _count_word(n: int) -> str:
    return str(n)  # VQA answers use digits (the official normalisation maps words to digits)


def questions_for(scene: dict, rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    objs = scene["objects"]
    cands: list[tuple[str, str]] = []
    for shape in SHAPES:
        same = [o for o in objs if o["shape"] == shape]
        if len(same) == 1:
            cands.append((f"what color is the {shape}?", same[0]["color"]))
            o = same[0]
            cands.append((f"where is the {o['color']} {shape}?", _where_answer(o)))
        cands.append((f"how many {PLURAL[shape]} are there?", _count_word(len(same))))
    for color in COLORS:
        same = [o for o in objs if o["color"] == color]
        if len(same) == 1:
            cands.append((f"what shape is the {color} object?", same[0]["shape"]))
    cands.append(("how many shapes are in the picture?", _count_word(len(objs))))
    o = objs[int(rng.integers(len(objs)))]
    cands.append((f"is there a {o['color']} {o['shape']}?", "yes"))
    fake = corrupt_scene(scene, rng)["objects"]
    present = {(x["color"], x["shape"]) for x in objs}
    for f in fake:
        if (f["color"], f["shape"]) not in present:
            cands.append((f"is there a {f['color']} {f['shape']}?", "no"))
            break
    picks = rng.permutation(len(cands))[:k]
    return [cands[i] for i in picks]


def _where_answer(o: dict) -> str:
    if o["row"] == "middle" and o["col"] == "center":
        return "center"
    if o["row"] == "middle":
        return o["col"]
    if o["col"] == "center":
        return o["row"]
    return f"{o['row']} {o['col']}"


def _votes(answer: str, rng: np.random.Generator, pool: list[str]) -> list[str]:
    """10 annotator answers: mostly the truth, sometimes 1-2 plausible disagreements."""
    votes = [answer] * 10
    if rng.random() < 0.2:
        for j in rng.choice(10, size=int(rng.integers(1, 3)), replace=False):
            votes[int(j)] = str(rng.choice(pool))
    return votes


# ---------------------------------------------------------------------------------------------
# Writing


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _dump(obj, path: str) -> None:
    write_json_atomic(path, obj, ensure_ascii=False, separators=(",", ":"))


_BASIC_SPLIT = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def build_vocab(lines: list[str]) -> list[str]:
    """Deterministic WordPiece vocab: specials, every character seen (and its ## form), then the
    corpus words in sorted order (BERT basic-tokenizer split: words and single punctuation)."""
    words, chars = set(), set()
    for line in lines:
        for tok in _BASIC_SPLIT.findall(line.lower()):
            words.add(tok)
            chars.update(tok)
    chars.update("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = list(SPECIAL_TOKENS)
    ordered_chars = sorted(chars)
    vocab += ordered_chars + ["##" + c for c in ordered_chars if c.isalnum()]
    seen = set(vocab)
    vocab += [w for w in sorted(words) if w not in seen]
    return vocab


def _web_key(i: int) -> str:
    """The img2dataset key of web sample i in the shards."""
    return f"{i:09d}"


def _web_path(i: int) -> str:
    """Web image i relative to images/ (`load_scenes` reads the index back)."""
    return f"web/web_{i:09d}.jpg"


def generate_embedded_dataset(out_dir: str, config: SyntheticConfig | None = None, **overrides) -> dict:
    """Writes the embedded dataset to `out_dir` (see module docstring); returns the manifest."""
    cfg = dataclasses.replace(config or SyntheticConfig(), **overrides)
    t0 = time.time()
    img_root = os.path.join(out_dir, "images")
    ann_dir = os.path.join(out_dir, "annotations")
    for d in (os.path.join(img_root, "web"), os.path.join(img_root, "coco"), ann_dir, os.path.join(out_dir, "shards")):
        os.makedirs(d, exist_ok=True)
    scenes_out: dict[str, dict] = {}
    corpus: list[str] = []

    # --- noisy web split ------------------------------------------------------------------
    web_scenes, web_paths, web_bytes = [], [], []
    for i in range(cfg.num_web):
        rng = np.random.default_rng([cfg.seed, 1, i])
        scene = sample_scene(rng)
        rel = _web_path(i)
        data = _jpeg(render_scene(scene, cfg.image_size, rng), cfg.jpeg_quality)
        with open(os.path.join(img_root, rel), "wb") as f:
            f.write(data)
        web_scenes.append(scene)
        web_paths.append(rel)
        web_bytes.append(data)
        scenes_out[rel] = scene
    clean = [describe(s, np.random.default_rng([cfg.seed, 2, i])) for i, s in enumerate(web_scenes)]
    noise_rng = np.random.default_rng([cfg.seed, 3])
    n_noise = int(round(cfg.noise_fraction * cfg.num_web))
    noisy_idx = set(noise_rng.permutation(cfg.num_web)[:n_noise].tolist())
    web_entries, noise_entries = [], []
    for i in range(cfg.num_web):
        rng = np.random.default_rng([cfg.seed, 4, i])
        caption, kind = clean[i], "clean"
        if i in noisy_idx:
            kind = str(rng.choice(["other_image", "wrong_attribute", "junk"], p=[0.4, 0.35, 0.25]))
            if kind == "other_image" and cfg.num_web > 1:
                j = int(rng.integers(cfg.num_web - 1))
                caption = clean[j + (j >= i)]
            elif kind == "wrong_attribute":
                caption = describe(corrupt_scene(web_scenes[i], rng), rng)
            else:
                kind, caption = "junk", junk_caption(rng)
        web_entries.append({"image": web_paths[i], "caption": caption})
        noise_entries.append({"image": web_paths[i], "key": _web_key(i), "caption": caption,  # key: in the shards
                              "is_noise": kind != "clean", "noise_type": kind, "clean_caption": clean[i]})
    corrupt_entries = []
    for k in range(cfg.num_corrupt):
        rel = f"web/broken_{k:05d}.jpg"
        kind = k % 4
        good = web_bytes[k % max(1, len(web_bytes))] if web_bytes else b"\xff\xd8"
        payload = [b"", good[: len(good) // 3], b"this is not an image" * 8, None][kind]
        if payload is not None:
            with open(os.path.join(img_root, rel), "wb") as f:
                f.write(payload)
        corrupt_entries.append({"image": rel if payload is not None else f"web/missing_{k:05d}.jpg",
                                "caption": "a broken image"})
    _dump(web_entries + corrupt_entries, os.path.join(ann_dir, "pretrain_web.json"))
    _dump(noise_entries, os.path.join(ann_dir, "web_noise.json"))
    corpus += [pre_caption(e["caption"], 30) for e in web_entries]

    # webdataset shards (img2dataset layout: {key}.jpg / .txt / .json, and {shard}_stats.json)
    shard_files = []
    for s in range(0, cfg.num_web, cfg.shard_size):
        path = os.path.join(out_dir, "shards", f"web-{s // cfg.shard_size:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(cfg.num_web, s + cfg.shard_size)):
                key = _web_key(i)
                meta = {"key": key, "caption": web_entries[i]["caption"], "url": f"synthetic://web/{key}.jpg",
                        "status": "success", "width": cfg.image_size, "height": cfg.image_size,
                        "original_width": cfg.image_size, "original_height": cfg.image_size}
                for ext, payload in (("jpg", web_bytes[i]), ("txt", web_entries[i]["caption"].encode()),
                                     ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(payload), 0  # mtime 0: byte-identical reruns
                    tar.addfile(info, io.BytesIO(payload))
        n = min(cfg.num_web, s + cfg.shard_size) - s  # img2dataset's per-shard stats file, counts only
        write_json_atomic(path.removesuffix(".tar") + "_stats.json",
                          {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0}, indent=4)
        shard_files.append(os.path.relpath(path, out_dir))

    # --- clean human-annotated split (coco_karpathy format) -----------------------------
    splits = {"train": cfg.num_coco_train, "val": cfg.num_coco_val, "test": cfg.num_coco_test}
    coco_scenes: dict[str, list[tuple[str, dict]]] = {}
    coco_id = 0
    karpathy_train, pretrain_coco = [], []
    for split_no, (split, n) in enumerate(splits.items()):
        items, eval_entries = [], []
        for i in range(n):
            coco_id += 1
            rng = np.random.default_rng([cfg.seed, 10 + split_no, i])
            scene = sample_scene(rng)
            rel = f"coco/COCO_synth_{coco_id:012d}.jpg"
            with open(os.path.join(img_root, rel), "wb") as f:
                f.write(_jpeg(render_scene(scene, cfg.image_size, rng), cfg.jpeg_quality))
            caps, tries = [], 0
            while len(caps) < cfg.captions_per_image and tries < 50:
                c = describe(scene, rng)
                tries += 1
                if c not in caps or tries > 20:
                    caps.append(c)
            items.append((rel, scene))
            scenes_out[rel] = scene
            corpus += [pre_caption(c, 30) for c in caps]
            if split == "train":
                karpathy_train += [{"image": rel, "caption": c, "image_id": f"synth_{coco_id}"} for c in caps]
                pretrain_coco.append({"image": rel, "caption": caps})
            else:
                eval_entries.append({"image": rel, "caption": caps})
        coco_scenes[split] = items
        if split != "train":
            _dump(eval_entries, os.path.join(ann_dir, f"coco_karpathy_{split}.json"))
    _dump(karpathy_train, os.path.join(ann_dir, "coco_karpathy_train.json"))
    _dump(pretrain_coco, os.path.join(ann_dir, "pretrain_coco.json"))

    # --- VQA ---------------------------------------------------------------------------------
    answer_pool = sorted(set(COLORS) | set(SHAPES) | {"1", "2", "3", "0", "yes", "no", "center", "left", "right",
                                                      "top", "bottom"} |
                         {f"{r} {c}" for r in ("top", "bottom") for c in ("left", "right")})
    qid = 0
    vqa = {"train": [], "test": []}
    for split, key in (("train", "train"), ("test", "test")):
        for i, (rel, scene) in enumerate(coco_scenes[key]):
            rng = np.random.default_rng([cfg.seed, 20 + (split == "test"), i])
            for q, a in questions_for(scene, rng, cfg.questions_per_image):
                qid += 1
                vqa[split].append({"question_id": qid, "question": q, "answer": _votes(a, rng, answer_pool),
                                   "image": rel, "dataset": "vqa"})
                corpus += [pre_question(q), a]
    vg = []
    for i in range(min(cfg.vg_questions, cfg.num_web)):
        rng = np.random.default_rng([cfg.seed, 30, i])
        (q, a), = questions_for(web_scenes[i], rng, 1)
        qid += 1
        vg.append({"question_id": qid, "question": q, "answer": a, "image": web_paths[i].split("/", 1)[1],
                   "dataset": "vg"})
        corpus += [pre_question(q), a]
    _dump(vqa["train"], os.path.join(ann_dir, "vqa_train.json"))
    _dump(vqa["test"], os.path.join(ann_dir, "vqa_test.json"))
    _dump(vg, os.path.join(ann_dir, "vg_qa.json"))
    _dump(answer_pool, os.path.join(ann_dir, "answer_list.json"))

    # --- corpus, vocab, scenes, manifest ------------------------------------------------
    corpus += [pre_caption(c, 30) for c in clean]
    with open(os.path.join(out_dir, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")
    vocab = build_vocab(corpus)
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    _dump(scenes_out, os.path.join(out_dir, "scenes.json"))
    manifest = {
        "config": dataclasses.asdict(cfg),
        "image_root": "images",
        "vg_image_root": "images/web",
        "annotations": {k: f"annotations/{k}.json" for k in (
            "pretrain_web", "pretrain_coco", "web_noise", "coco_karpathy_train", "coco_karpathy_val",
            "coco_karpathy_test", "vqa_train", "vqa_test", "vg_qa", "answer_list")},
        "shards": shard_files,
        "counts": {"web_images": cfg.num_web, "web_noisy_captions": n_noise, "corrupt_web_entries": cfg.num_corrupt,
                   "coco_images": dict(splits), "karpathy_train_captions": len(karpathy_train),
                   "vqa_train_questions": len(vqa["train"]), "vqa_test_questions": len(vqa["test"]),
                   "vg_questions": len(vg), "answers": len(answer_pool), "corpus_lines": len(corpus),
                   "vocab_size": len(vocab)},
        "seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(os.path.join(out_dir, "manifest.json"), manifest, indent=1)  # last: marks the data complete
    return manifest


EMBEDDED_SPLITS = ("web", "web_shards", "coco", "coco_karpathy_train", "val", "test", "vqa_train", "vqa_test")


def embedded_spec(split: str, root: str) -> dict:
    """A DatasetSpec dict for one split of the embedded dataset written at ``root`` (the one table
    the trainer, the evaluators and the data configs share): web (noisy BLIP JSON), web_shards
    (the same as webdataset tars), coco (clean pretraining list), coco_karpathy_train, val, test,
    vqa_train (VQA + VG questions) and vqa_test."""
    img, ann = os.path.join(root, "images"), os.path.join(root, "annotations")
    table = {
        "web": dict(name="web", format="blip_json", paths=[os.path.join(ann, "pretrain_web.json")], image_root=img),
        "web_shards": dict(name="web_shards", format="webdataset", paths=[os.path.join(root, "shards", "web-*.tar")]),
        "coco": dict(name="coco", format="blip_json", paths=[os.path.join(ann, "pretrain_coco.json")],
                     image_root=img),
        "coco_karpathy_train": dict(name="coco_karpathy_train", format="coco_karpathy", split="train",
                                    paths=[os.path.join(ann, "coco_karpathy_train.json")], image_root=img),
        "val": dict(name="coco_val", format="coco_karpathy", split="val", image_root=img,
                    paths=[os.path.join(ann, "coco_karpathy_val.json")]),
        "test": dict(name="coco_test", format="coco_karpathy", split="test", image_root=img,
                     paths=[os.path.join(ann, "coco_karpathy_test.json")]),
        # VG questions ask about web images, which live under images/web.
        "vqa_train": dict(name="vqa_train", format="vqa", image_root=img, vg_image_root=os.path.join(img, "web"),
                          paths=[os.path.join(ann, "vqa_train.json"), os.path.join(ann, "vg_qa.json")]),
        "vqa_test": dict(name="vqa_test", format="vqa", split="test", image_root=img,
                         paths=[os.path.join(ann, "vqa_test.json")]),
    }
    if split not in table:
        raise ValueError(f"unknown embedded split {split!r}; known: {list(EMBEDDED_SPLITS)}")
    return table[split]
