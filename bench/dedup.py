"""Job `dedup`: perceptual hashing speed, duplicate-pair quality on a generated collection with
known truth, and the all-pairs search on a million hashes; imagehash and imagededup beside it.

    .venv/bin/python bench/dedup.py [--quick] [--repeat N] [--only speed,job,pairs,search]

Every timed figure is the median of N runs (default 3; 1 with --quick) measured in this run,
so ratios compare like with like on a noisy, shared machine.

1. Collection (generated once, cached in bench/_data/dedup/collection-*): random scenes
   (`datamill.testing.images.make_scene`, 640x480, JPEG q90; some stored as PNG) as
   originals; each original gets copies of two kinds among resize (0.5x, 2x), JPEG
   recompression (q50-95), format (JPEG->PNG, PNG->JPEG), EXIF rotation (orientation 6, 8
   or 3, the pixels stored turned the other way), a 2% crop (one corner, or 1% each side) and
   brightness (+-10%); and negatives that resemble an original: the same scene with 3 of its
   shapes redrawn ("similar"), or half of them ("half redrawn").  "edit" (the same scene with
   1 shape redrawn) is neither a duplicate nor clearly distinct: it is shown, not scored.
   truth.json records which original each file comes from.
2. Hashing speed on one core (so per core): imagehash.phash(Image.open(p)) against
   datamill.media.hashes.hash_image (exact and fast), and imagededup's PHash.encode_image, on
   the 640x480 JPEG originals and on textured (photo-like) versions of them, with the floor
   no JPEG hash can beat (decode only, gray at 1/8 scale); CPU time per image is the figure
   least disturbed by other work on the machine, so the ratios use it.  And the whole job,
   datamill.dedup(workers=2), in a fresh process, against imagededup's encode_images +
   find_duplicates (2 workers).
3. Pairs: precision and recall over pairs of files (a true pair: both from the same
   original), by Hamming threshold, for datamill exact and fast and imagededup's PHash (its
   own hashes; its own find_duplicates at its default max_distance_threshold=10 and at 8);
   per transformation at the default threshold.
4. Search: near_pairs on 1,000,000 hashes at threshold 8 (and near_groups, the job's path),
   each run in a fresh process (peak RSS = its VmHWM): uniformly random hashes, and clustered
   ones (real phashes of generated scenes, each replicated with 4-12 random bits flipped),
   both with planted pairs (1-8 bits apart) that must all be found; and imagededup's
   find_duplicates (brute force) beside it on 5,000 and 100,000 hashes, the latter stopped at
   a time cap and projected from its own progress bar.

imagededup is installed (once) into its own virtual environment, bench/_venvs/imagededup, and
run there in subprocesses.  This file is also its entry point there (`--imagededup ...`), so
the top-level imports are only the standard library, NumPy and _common.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from _common import machine, machine_busy_cpu, median, peak_rss_mb, rate, ratio, run_child, table

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data" / "dedup"
IMAGEDEDUP_VENV = HERE / "_venvs" / "imagededup"
WORKERS = 2
THRESHOLD = 8  # datamill's default
THRESHOLDS = range(4, 13)
IMAGEDEDUP_DEFAULT = 10  # imagededup's default max_distance_threshold

SIZES = {  # full, quick
    "bases": (600, 60),
    "speed_files": (300, 60),
    "search": (1_000_000, 100_000),
    "centres": (4000, 1000),
    # imagededup's search: (hashes, seconds after which it is stopped and its progress projected)
    "idd_search": (((5_000, 120.0), (100_000, 180.0)), ((5_000, 60.0),)),
}
PLANTED_SHARE = 0.01  # planted pairs: 1% of the hashes (10,000 in a million)
SEED = 20_000  # scene seeds of the originals: SEED + k

# -- the collection --------------------------------------------------------------------------
DUP_KINDS = ["resize", "recompress", "format", "exif", "crop", "brightness"]
VARIANTS = {
    "resize": ["0.5x", "2x"],
    "recompress": ["q50", "q70", "q85", "q95"],
    "format": ["JPEG->PNG", "PNG->JPEG"],
    "exif": ["orientation 6", "orientation 8", "orientation 3"],
    "crop": ["2% one corner", "2% centred"],
    "brightness": ["+10%", "-10%"],
}
NEGATIVE_KINDS = ["similar", "half redrawn"]
# A "similar" negative's 3 redrawn shapes change at least this share of the pixels (else a
# tiny shape redrawn leaves the same picture: an edit, not a distinct image).
MIN_CHANGED = {"similar": 0.2}
TARGET_KINDS = ["resize", "recompress", "format", "exif"]  # precision >= 0.99, recall >= 0.95
# The stored pixels of an EXIF-oriented copy: the upright picture turned the other way, as
# datamill.testing.images.make_image stores them.
UNDO_ORIENTATION = {6: "ROTATE_90", 8: "ROTATE_270", 3: "ROTATE_180"}


def draw_scene(seed: int, redraw: int = 0, redraw_seed: int = 0):
    """The picture `make_scene(seed=seed)` encodes, with its last `redraw` shapes drawn from
    another random stream (so the same background and the other shapes): a similar but
    different picture.  With redraw=0 it is make_scene's (checked in `collection`)."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    other = np.random.default_rng(redraw_seed)
    width, height = 640, 480
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(background, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    shapes = int(rng.integers(12, 40))
    for k in range(shapes):
        r = other if k >= shapes - redraw else rng
        x0, x1 = sorted(r.integers(0, width, 2))
        y0, y1 = sorted(r.integers(0, height, 2))
        color = tuple(int(c) for c in r.integers(0, 256, 3))
        (draw.ellipse if r.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 4, y1 + 4), fill=color)
    return image, shapes


def _encode(image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _copy(image, kind: str, variant: str) -> tuple[bytes, str]:
    """The bytes and extension of one copy of an original's decoded pixels."""
    from PIL import Image, ImageEnhance
    w, h = image.size
    if kind == "resize":
        scale = 0.5 if variant == "0.5x" else 2.0
        return _encode(image.resize((int(w * scale), int(h * scale)), Image.Resampling.LANCZOS), quality=90), "jpg"
    if kind == "recompress":
        return _encode(image, quality=int(variant[1:])), "jpg"
    if kind == "format":
        return (_encode(image, "PNG"), "png") if variant == "JPEG->PNG" else (_encode(image, quality=90), "jpg")
    if kind == "exif":
        orientation = int(variant.split()[-1])
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = image.transpose(getattr(Image.Transpose, UNDO_ORIENTATION[orientation]))
        return _encode(stored, quality=90, exif=exif.tobytes()), "jpg"
    if kind == "crop":
        dx, dy = round(w * 0.02), round(h * 0.02)
        box = (dx, dy, w, h) if variant == "2% one corner" else (dx // 2, dy // 2, w - dx // 2, h - dy // 2)
        return _encode(image.crop(box), quality=90), "jpg"
    if kind == "brightness":
        return _encode(ImageEnhance.Brightness(image).enhance(1.1 if variant == "+10%" else 0.9), quality=90), "jpg"
    raise ValueError(kind)


def plan_original(k: int) -> dict:
    """What original k gets: its two kinds of copies (a variant each) and its negatives."""
    kinds = [DUP_KINDS[k % 6], DUP_KINDS[(k + 3) % 6]]
    copies = [(kind, VARIANTS[kind][(k // 6) % len(VARIANTS[kind])]) for kind in kinds]
    negatives = [("similar", 3)] if k % 3 == 0 else [("half redrawn", None)] if k % 3 == 1 else []
    if k % 5 == 0:
        negatives.append(("edit", 1))
    return {"copies": copies, "negatives": negatives, "png": ("format", "PNG->JPEG") in copies}


def make_original(job: tuple[str, int, int]) -> list[dict]:
    """Write original k, its copies and its negatives; return their truth records."""
    from PIL import Image
    root, k, n_bases = job
    root = Path(root)
    plan = plan_original(k)
    picture, shapes = draw_scene(SEED + k)
    stem = f"s{k:04d}"
    base_name = f"{stem}.png" if plan["png"] else f"{stem}.jpg"
    data = _encode(picture, "PNG") if plan["png"] else _encode(picture, quality=90)
    (root / base_name).write_bytes(data)
    records = [{"name": base_name, "origin": k, "kind": "original", "variant": "PNG" if plan["png"] else "JPEG q90"}]
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    for kind, variant in plan["copies"]:
        copy, ext = _copy(decoded, kind, variant)
        name = f"{stem}-{kind}-{re.sub(r'[^A-Za-z0-9.]+', '_', variant)}.{ext}"
        (root / name).write_bytes(copy)
        records.append({"name": name, "origin": k, "kind": kind, "variant": variant})
    pixels = np.asarray(picture)
    for index, (kind, redraw) in enumerate(plan["negatives"]):
        redraw = shapes // 2 if redraw is None else redraw
        for attempt in range(100):  # "similar": until the redrawn shapes change enough pixels
            sibling, _ = draw_scene(SEED + k, redraw=redraw, redraw_seed=10**6 + 1000 * k + 100 * index + attempt)
            changed = float(np.any(np.asarray(sibling) != pixels, axis=2).mean())
            if changed >= MIN_CHANGED.get(kind, 0.0):
                break
        name = f"{stem}-{kind.replace(' ', '_')}.jpg"
        (root / name).write_bytes(_encode(sibling, quality=90))
        records.append({"name": name, "origin": n_bases * (1 + index) + k, "kind": kind, "like": k,
                        "variant": f"{redraw} of {shapes} shapes redrawn", "changed": changed})
    return records


def collection(quick: bool) -> tuple[Path, list[dict]]:
    """The generated collection (cached): its folder and the truth, one record per file."""
    import multiprocessing

    from datamill.testing.images import make_scene
    n_bases = SIZES["bases"][quick]
    root = DATA / f"collection-{'quick' if quick else 'full'}"
    marker = DATA / f"truth-{'quick' if quick else 'full'}.json"
    spec = {"bases": n_bases, "seed": SEED, "variants": VARIANTS, "min_changed": MIN_CHANGED, "version": 2}
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved["spec"] == spec and all((root / r["name"]).exists() for r in saved["files"]):
            return root, saved["files"]
    picture, _ = draw_scene(SEED)
    if _encode(picture, quality=90) != make_scene(None, seed=SEED):
        raise RuntimeError("draw_scene no longer draws make_scene's picture: update it")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"generating the collection in {root} (once) ...", flush=True)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        files = [r for rs in pool.imap(make_original, [(str(root), k, n_bases) for k in range(n_bases)], 4)
                 for r in rs]
    marker.write_text(json.dumps({"spec": spec, "files": files}))
    print(f"  {len(files)} files in {time.perf_counter() - start:.0f} s", flush=True)
    return root, files


# -- imagededup in its own virtual environment ------------------------------------------------
@functools.cache
def imagededup_python() -> Path | None:
    """Its venv's python, installing it the first time; None if that fails (reported)."""
    python = IMAGEDEDUP_VENV / "bin" / "python"
    check = [str(python), "-c", "from imagededup.methods import PHash"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing imagededup into {IMAGEDEDUP_VENV} (once; it pulls torch) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(IMAGEDEDUP_VENV)], check=True)
    pip = [str(IMAGEDEDUP_VENV / "bin" / "pip"), "install", "-q"]
    if subprocess.run([*pip, "imagededup"]).returncode != 0:
        # Its hashing and search need none of torch: install it without its dependencies.
        subprocess.run([*pip, "--no-deps", "imagededup"])
        subprocess.run([*pip, "numpy", "pillow", "pywavelets", "scipy", "tqdm"])
    if subprocess.run(check, capture_output=True).returncode != 0:
        print("  imagededup could not be installed: its columns stay empty", flush=True)
        return None
    return python


def run_imagededup(args: list[str], timeout: float | None = None) -> dict:
    """Run this file with imagededup's python; its JSON result, or on timeout the progress its
    progress bar (tqdm, on stderr) had reached: {"timeout": s, "done": k, "total": n}."""
    python = imagededup_python()
    if python is None:
        return {"error": "not installed"}
    with open(DATA / "imagededup.stderr", "w+") as err:
        proc = subprocess.Popen([str(python), __file__, "--imagededup", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: its Pool workers too
            proc.communicate()
            err.seek(0)
            bars = re.findall(r"(\d+)/(\d+) \[", err.read())
            done, total = (int(bars[-1][0]), int(bars[-1][1])) if bars else (0, 0)
            return {"timeout": timeout, "done": done, "total": total}
        err.seek(0)
        if proc.returncode != 0 or not out.strip():
            return {"error": f"exit {proc.returncode}: {err.read()[-1500:]}"}
    return json.loads(out.strip().splitlines()[-1])


def imagededup_main(args: list[str]) -> None:
    """Inside imagededup's venv: `hash FILELIST REPEAT`, `collection DIR OUT THRESHOLDS`,
    `search NPZ N THRESHOLD`; prints one JSON line."""
    from imagededup.methods import PHash
    what = args[0]
    if what == "hash":  # one core: its encode_image, file after file
        paths = Path(args[1]).read_text().splitlines()
        hasher = PHash(verbose=False)
        for p in paths[:10]:
            hasher.encode_image(image_file=p)
        runs = []
        for _ in range(int(args[2])):
            cpu, wall = time.process_time(), time.perf_counter()
            for p in paths:
                hasher.encode_image(image_file=p)
            runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
        print(json.dumps({"runs": runs, "files": len(paths)}))
    elif what == "collection":  # the whole thing on a folder, 2 workers, as its users run it
        hasher = PHash(verbose=False)
        start = time.perf_counter()
        encodings = hasher.encode_images(image_dir=args[1], num_enc_workers=WORKERS)
        encode_s = time.perf_counter() - start
        found, search_s = {}, {}
        for threshold in args[3].split(","):
            start = time.perf_counter()
            dups = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=int(threshold),
                                          scores=True, num_dist_workers=WORKERS)
            search_s[threshold] = time.perf_counter() - start
            found[threshold] = {k: [(n, int(d)) for n, d in v] for k, v in dups.items()}
        Path(args[2]).write_text(json.dumps({"hashes": encodings, "found": found}))
        print(json.dumps({"encode_s": encode_s, "search_s": search_s, "files": len(encodings)}))
    elif what == "search":
        data = np.load(args[1])
        hashes = data["hashes"][: int(args[2])]
        encodings = {str(k): f"{int(h):016x}" for k, h in enumerate(hashes)}
        hasher = PHash(verbose=True)  # its progress bar tells how far it got if stopped
        start = time.perf_counter()
        dups = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=int(args[3]),
                                      scores=True, num_dist_workers=WORKERS)
        seconds = time.perf_counter() - start
        pairs = sum(len(v) for v in dups.values()) // 2
        planted = [(int(p), int(q)) for p, q in data["planted"]]
        found = sum(1 for p, q in planted if any(n == str(q) for n, _ in dups[str(p)]))
        print(json.dumps({"seconds": seconds, "pairs": pairs, "planted": len(planted),
                          "planted_found": found, "peak_mb": peak_rss_mb()}))
    else:
        raise SystemExit(f"unknown imagededup command {what}")


class Others:
    """Wall time from now to stop(), and how many cores other processes kept busy meanwhile
    (the machine's busy CPU time less this process's and its waited-for children's)."""

    def __init__(self):
        self.wall, self.busy, self.ours = time.perf_counter(), machine_busy_cpu(), self._ours()

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        others = machine_busy_cpu() - self.busy - (self._ours() - self.ours)
        return wall, max(0.0, others) / wall


# -- 2. hashing speed, one core --------------------------------------------------------------
def speed(files: list[Path], repeat: int) -> tuple[list[dict], dict]:
    """images/s of each method on one core (this process), interleaved runs."""
    import imagehash
    from PIL import Image

    from datamill.media.hashes import hash_image, hash_images
    paths = [str(p) for p in files]
    methods = {
        "imagehash.phash(Image.open(p))": lambda: [imagehash.phash(Image.open(p)) for p in paths],
        "datamill hash_image(p)  (exact)": lambda: [hash_image(p) for p in paths],
        "datamill hash_image(p, fast=True)": lambda: [hash_image(p, fast=True) for p in paths],
        "datamill hash_images(paths)  (exact; the job's path)": lambda: hash_images(paths),
        "datamill hash_images(paths, fast=True)  (the job's path)": lambda: hash_images(paths, fast=True),
        "floor: decode only, gray at 1/8 scale (no hash)": lambda: [_draft_decode(p) for p in paths],
    }
    for fn in methods.values():  # warm up: imports, page cache
        fn()
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    for r in range(repeat):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for name in order:
            cpu, measure = time.process_time(), Others()
            methods[name]()
            cpu = time.process_time() - cpu
            wall, others = measure.stop()
            runs[name].append({"wall": wall, "cpu": cpu, "others": others})
    list_file = DATA / "speed-files.txt"  # rewritten for each set
    list_file.write_text("\n".join(paths))
    idd = run_imagededup(["hash", str(list_file), str(repeat)])
    if "runs" in idd:
        runs["imagededup PHash().encode_image(p)"] = [{**r, "others": None} for r in idd["runs"]]
    # Best of the interleaved rounds: runs of 0.1-2 s on a shared virtual machine are only
    # ever slowed down by others (steal time shows in CPU time too), never sped up.
    return [{"method": name, "n": len(paths), "wall": min(r["wall"] for r in rs),
             "cpu": min(r["cpu"] for r in rs),
             "others": median([r["others"] for r in rs]) if rs[0]["others"] is not None else None}
            for name, rs in runs.items()], idd


def _draft_decode(path: str) -> None:
    """What no JPEG hash can avoid: libjpeg's entropy decoding (here with the cheapest
    output, gray at 1/8 scale)."""
    from PIL import Image
    with Image.open(path) as img:
        img.draft("L", (img.width // 8, img.height // 8))
        img.load()


def textured_set(n: int) -> list[Path]:
    """n 640x480 JPEGs (q90) of scenes with photo-like texture (noise at two scales, as
    tests/test_hashes.py's photos): larger files, more entropy decoding (cached)."""
    from PIL import Image
    root = DATA / "speed-textured"
    paths = [root / f"t{k:04d}.jpg" for k in range(n)]
    if all(p.exists() for p in paths):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths):
        rng = np.random.default_rng(k)
        coarse = np.kron(rng.normal(0, 12, (480 // 8, 640 // 8)), np.ones((8, 8)))
        texture = coarse + rng.normal(0, 6, (480, 640))
        picture = np.asarray(draw_scene(SEED + k)[0], dtype=np.float64) + texture[..., None]
        path.write_bytes(_encode(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)), quality=90))
    return paths


def speed_table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["method"].startswith("imagehash"))
    # the job hashes each task's images together (hash_images), so the targets apply there
    targets = {"datamill hash_images(paths)  (exact; the job's path)": 1.0,
               "datamill hash_images(paths, fast=True)  (the job's path)": 3.0}
    out = []
    for r in rows:
        x = base["cpu"] / r["cpu"]
        target = targets.get(r["method"])
        out.append([r["method"], rate(r["n"] / r["wall"]), f"{1000 * r['cpu'] / r['n']:.2f} ms",
                    rate(r["n"] / r["cpu"]), ratio(x),
                    "" if target is None else f">= {target:g}x: {'met' if x >= target else 'MISSED'}",
                    "" if r["others"] is None else f"{r['others']:.1f}"])
    return table(["method (1 process)", "images/s (wall)", "CPU per image", "images/s per core (CPU)",
                  "vs imagehash (CPU)", "target", "others' cores"], out)


# -- the job, in a fresh process ---------------------------------------------------------------
JOB_MODES = {  # the default writes report.html (thumbnails of every group member)
    "exact": {"fast": False},
    "fast": {"fast": True},
    "exact, report=None": {"fast": False, "report": None},
    "fast, report=None": {"fast": True, "report": None},
}


def job_child(mode: str, src: str, dst: str) -> None:
    import datamill
    import datamill.jobs.dedup  # noqa: F401  (imports before timing)
    shutil.rmtree(dst, ignore_errors=True)
    measure = Others()
    report = datamill.dedup(src, dst, threshold=THRESHOLD, workers=WORKERS, quiet=True, **JOB_MODES[mode])
    seconds, others = measure.stop()
    start = time.perf_counter()
    again = datamill.dedup(src, dst, threshold=10, workers=WORKERS, quiet=True, **JOB_MODES[mode])
    regroup = time.perf_counter() - start
    if report.exit_code or again.exit_code:
        raise RuntimeError(f"datamill.dedup exited {report.exit_code}, then {again.exit_code}: {report.counts}")
    print(json.dumps({"seconds": seconds, "others": others, "regroup_s": regroup, "counts": report.counts,
                      "driver_mb": peak_rss_mb()}))


def jobs(src: Path, n_files: int, repeat: int) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in JOB_MODES}
    runs["imagededup"] = []
    result_file = DATA / "imagededup-collection.json"
    idd_error = None
    for r in range(repeat):
        for mode in JOB_MODES:
            dst = DATA / ("job-" + re.sub(r"[^a-z]+", "-", mode))
            res = run_child([__file__, "--child", "job", mode, str(src), str(dst)])
            res["dst"] = str(dst)
            runs[mode].append(res)
        idd = run_imagededup(["collection", str(src), str(result_file), f"{IMAGEDEDUP_DEFAULT},{THRESHOLD}"])
        if "encode_s" in idd:
            runs["imagededup"].append(idd)
        else:
            idd_error = idd
    return {"runs": runs, "files": n_files, "imagededup_result": result_file if runs["imagededup"] else None,
            "imagededup_error": idd_error}


def job_table(j: dict) -> str:
    n = j["files"]
    rows = []
    idd = j["runs"]["imagededup"]
    idd_s = median([r["encode_s"] + r["search_s"][str(IMAGEDEDUP_DEFAULT)] for r in idd]) if idd else None
    for mode in JOB_MODES:
        rs = j["runs"][mode]
        s = median([r["seconds"] for r in rs])
        rows.append([f"datamill.dedup(workers=2, {mode})", f"{s:.1f} s", rate(n / s),
                     f"{median([r['regroup_s'] for r in rs]):.1f} s", ratio(idd_s / s) if idd_s else "",
                     f"{median([r['others'] for r in rs]):.1f}", f"{max(r['driver_mb'] for r in rs):.0f} MB"])
    if idd:
        enc = median([r["encode_s"] for r in idd])
        rows.append(["imagededup PHash: encode_images + find_duplicates (2 workers)", f"{idd_s:.1f} s",
                     rate(n / idd_s), f"{median([r['search_s'][str(IMAGEDEDUP_DEFAULT)] for r in idd]):.1f} s "
                     "(find_duplicates alone)", "1.00x", "", f"(encode {enc:.1f} s)"])
    return table(["whole job on the collection", "wall", "images/s", "rerun at threshold 10 (regroup)",
                  "speed vs imagededup", "others' cores", "driver peak RSS"], rows)


def job_quality(dst: Path, names: list[str], hashes_exact: np.ndarray, truth: list[dict]) -> list[str]:
    """The job's own groups (threshold 8, transitive) against the truth; its hashes against
    hash_image's."""
    import pyarrow.parquet as pq
    groups = pq.read_table(dst / "groups.parquet").to_pylist()
    manifest = pq.read_table(dst / "manifest.parquet").to_pylist()
    index = {n: i for i, n in enumerate(names)}
    same_hash = sum(int(r["hash"], 16) == int(hashes_exact[index[r["key"]]]) for r in manifest if r.get("hash"))
    group_of = np.arange(len(names)) + len(names)  # singletons: their own ids
    for g in groups:
        group_of[index[g["path"]]] = g["group"]
    scored = np.array([t["kind"] != "edit" for t in truth])
    origin = np.array([t["origin"] for t in truth])
    i, j = np.triu_indices(len(names), 1)
    keep = scored[i] & scored[j]
    i, j = i[keep], j[keep]
    true, pred = origin[i] == origin[j], group_of[i] == group_of[j]
    precision, recall = Pairs.pr(pred, true, np.ones(len(i), bool))
    return [f"the job's groups at threshold {THRESHOLD} (union-find, so transitive), as pairs over every "
            f"scored file: precision {share(precision)}, recall {share(recall)}; "
            f"{len({g['group'] for g in groups})} groups; hashes in its manifest equal to hash_image's: "
            f"{same_hash}/{len(manifest)}"]


# -- the whole job against imagehash in a Pool(2), whole processes ---------------------------
WHOLE = {"files": (4000, 400), "copies": (600, 60)}  # full, quick: the files, and copies among them
WHOLE_SEED = 50_000
WHOLE_KINDS = ["recompress q90", "brightness +10%", "byte-identical copy"]
WHOLE_RUNS = {  # label -> the command after the interpreter (SRC and DST appended as {src} {dst})
    "imagehash.phash in a multiprocessing.Pool(2) (baseline)": [__file__, "--child", "phash-pool", "{src}"],
    "datamill dedup --fast --workers 2 (report.html)": ["-m", "datamill", "dedup", "{src}", "{dst}", "--fast",
                                                         "--workers", "2", "--quiet"],
    "datamill dedup --workers 2 (exact, report.html)": ["-m", "datamill", "dedup", "{src}", "{dst}",
                                                        "--workers", "2", "--quiet"],
    "datamill dedup --fast --workers 2 --no-report": ["-m", "datamill", "dedup", "{src}", "{dst}", "--fast",
                                                       "--workers", "2", "--quiet", "--no-report"],
    "datamill dedup --workers 2 --no-report (exact)": ["-m", "datamill", "dedup", "{src}", "{dst}",
                                                       "--workers", "2", "--quiet", "--no-report"],
}
WHOLE_TARGETS = {"datamill dedup --fast --workers 2 (report.html)": 3.0,
                 "datamill dedup --workers 2 (exact, report.html)": 1.3}


def _whole_file(job: tuple[str, int, int]) -> None:
    """File k of the whole-job collection: a distinct scene, or (k >= distinct) a copy of
    scene k - distinct, kept 640x480 JPEG q90."""
    from PIL import Image, ImageEnhance

    from datamill.testing.images import make_scene
    root, k, distinct = job
    if k < distinct:
        make_scene(Path(root) / f"w{k:05d}.jpg", seed=WHOLE_SEED + k)
        return
    o = k - distinct
    data = make_scene(None, seed=WHOLE_SEED + o)
    kind = WHOLE_KINDS[o % len(WHOLE_KINDS)]
    if kind == "recompress q90":
        data = _encode(Image.open(io.BytesIO(data)).convert("RGB"), quality=90)
    elif kind == "brightness +10%":
        data = _encode(ImageEnhance.Brightness(Image.open(io.BytesIO(data)).convert("RGB")).enhance(1.1), quality=90)
    (Path(root) / f"w{o:05d}-copy.jpg").write_bytes(data)


def whole_collection(quick: bool) -> Path:
    """4,000 640x480 JPEGs q90 (cached): distinct scenes, and copies of some of them (so that
    30% of the files are in groups of two: what the report shows)."""
    import multiprocessing
    n, copies = WHOLE["files"][quick], WHOLE["copies"][quick]
    root = DATA / f"whole-{n}"
    marker = root / "spec.json"
    spec = {"files": n, "copies": copies, "seed": WHOLE_SEED, "kinds": WHOLE_KINDS, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"generating {n} JPEGs in {root} (once) ...", flush=True)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pool.map(_whole_file, [(str(root), k, n - copies) for k in range(n)], 50)
    marker.write_text(json.dumps(spec))
    return root


def phash_pool_child(src: str) -> None:
    """The baseline: imagehash.phash(Image.open(p)) over every JPEG of src in a Pool(2)."""
    import multiprocessing

    import imagehash
    from PIL import Image
    paths = sorted(str(p) for p in Path(src).glob("*.jpg"))
    with multiprocessing.Pool(WORKERS) as pool:
        hashes = pool.map(_phash, paths, chunksize=16)
    print(json.dumps({"hashes": len(hashes), "distinct": len(set(hashes))}))


def _phash(path: str) -> str:
    import imagehash
    from PIL import Image
    with Image.open(path) as img:
        return str(imagehash.phash(img))


def whole(quick: bool, repeat: int) -> dict:
    """Each command of WHOLE_RUNS in a fresh process (wall clock from the parent, so
    interpreter start and imports count), alternating order, `repeat` rounds; fresh DST."""
    import resource
    import sys
    src = whole_collection(quick)
    dst = DATA / "whole-dst"
    # as an installed package runs: byte code cached (here in a folder of its own, so that a
    # PYTHONDONTWRITEBYTECODE environment does not make every process compile datamill)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(DATA / "pycache")
    runs: dict[str, list[dict]] = {label: [] for label in WHOLE_RUNS}
    for r in range(-1, repeat):  # round -1 warms the byte code and page caches, untimed
        order = list(WHOLE_RUNS) if r % 2 == 0 else list(reversed(WHOLE_RUNS))
        for label in order:
            shutil.rmtree(dst, ignore_errors=True)
            args = [a.format(src=src, dst=dst) for a in WHOLE_RUNS[label]]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} exited {proc.returncode}: {proc.stderr[-2000:]}")
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            if r >= 0:
                runs[label].append({"wall": wall, "cpu": cpu})
    groups = None
    if (dst / "groups.parquet").exists():
        import pyarrow.parquet as pq
        groups = pq.read_table(dst / "groups.parquet").num_rows
    return {"runs": runs, "files": WHOLE["files"][quick], "in_groups": groups}


def whole_table(w: dict) -> str:
    base_label = next(iter(WHOLE_RUNS))
    base = median([r["wall"] for r in w["runs"][base_label]])
    base_runs = w["runs"][base_label]
    rows = []
    for label, rs in w["runs"].items():
        s = median([r["wall"] for r in rs])
        # the same round's baseline ran next to it (the order alternates): the ratio of each
        # pair is less moved by the machine's drift between rounds than the ratio of medians
        paired = [b["wall"] / r["wall"] for b, r in zip(base_runs, rs)]
        target = WHOLE_TARGETS.get(label)
        rows.append([label, f"{s:.2f} s", ", ".join(f"{r['wall']:.2f}" for r in rs),
                     f"{median([r['cpu'] for r in rs]):.2f} s", rate(w["files"] / s), ratio(base / s),
                     f"{ratio(median(paired))} ({', '.join(f'{x:.2f}' for x in paired)})",
                     "" if target is None else f">= {target:g}x: {'met' if base / s >= target else 'MISSED'}"])
    return table(["whole process (fresh, timed from outside)", "wall (median)", "runs", "CPU (all processes)",
                  "images/s", "vs baseline", "per round (median; each)", "target"], rows)


# -- 3. pairs quality --------------------------------------------------------------------------
def popcount64(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64))


class Pairs:
    """Every pair (i < j) of the collection's files, with the truth."""

    def __init__(self, truth: list[dict]):
        self.truth = truth
        self.kind = np.array([t["kind"] for t in truth])
        self.origin = np.array([t["origin"] for t in truth])
        self.variant = np.array([t["variant"] for t in truth])
        self.i, self.j = np.triu_indices(len(truth), 1)
        self.true = self.origin[self.i] == self.origin[self.j]
        base = {t["origin"]: n for n, t in enumerate(truth) if t["kind"] == "original"}
        # Each file's original (itself for originals, the one it resembles for negatives).
        self.original = np.array([base[t.get("like", t["origin"])] for t in truth])

    def among(self, kinds: list[str]) -> np.ndarray:
        """Pairs whose two files are both of these kinds."""
        inside = np.isin(self.kind, kinds)
        return inside[self.i] & inside[self.j]

    def touching(self, kinds: list[str], scored: np.ndarray) -> np.ndarray:
        inside = np.isin(self.kind, kinds)
        return (inside[self.i] | inside[self.j]) & scored

    def dist(self, hashes: np.ndarray) -> np.ndarray:
        return popcount64(hashes[self.i] ^ hashes[self.j])

    @staticmethod
    def pr(pred: np.ndarray, true: np.ndarray, where: np.ndarray) -> tuple[float | None, float | None]:
        """Precision and recall of `pred` among the pairs `where` (None: no pair to count)."""
        tp = int((pred & true & where).sum())
        predicted, positive = int((pred & where).sum()), int((true & where).sum())
        return (tp / predicted if predicted else None), (tp / positive if positive else None)


def share(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def pairs_from_found(found: dict, index: dict[str, int], n: int) -> np.ndarray:
    """imagededup's find_duplicates result as a boolean per pair (i < j, triu order)."""
    mark = np.zeros((n, n), bool)
    for name, dups in found.items():
        for other, _ in dups:
            a, b = index[name], index[other]
            mark[min(a, b), max(a, b)] = True
    return mark[np.triu_indices(n, 1)]


def quality(root: Path, truth: list[dict], idd_file: Path | None) -> dict:
    from datamill.media.hashes import hash_images
    names = [t["name"] for t in truth]
    paths = [str(root / n) for n in names]
    out = {"names": names}
    for mode, fast in (("exact", False), ("fast", True)):
        results = hash_images(paths, fast=fast)
        bad = [(n, r) for n, r in zip(names, results) if isinstance(r, Exception)]
        if bad:
            raise RuntimeError(f"datamill could not hash {len(bad)} files: {bad[:3]}")
        out[mode] = np.array([r.hashes["phash"] for r in results], dtype=np.uint64)
    if idd_file is not None and idd_file.exists():
        saved = json.loads(idd_file.read_text())
        hashes = saved["hashes"]
        missing = [n for n in names if not hashes.get(n)]
        out["imagededup_missing"] = missing
        out["imagededup"] = np.array([int(hashes[n], 16) if hashes.get(n) else 0 for n in names], dtype=np.uint64)
        index = {n: k for k, n in enumerate(names)}
        out["imagededup_found"] = {int(t): pairs_from_found(f, index, len(names)) for t, f in saved["found"].items()}
    return out


def sweep_table(p: Pairs, q: dict) -> tuple[str, list[str]]:
    target = p.among(["original", *TARGET_KINDS, *NEGATIVE_KINDS])
    scored = p.among(["original", *DUP_KINDS, *NEGATIVE_KINDS])
    # Pairs (original, a file made from it or resembling it) of one kind: rates that do not
    # depend on the collection's mix.
    with_original = {kind: (p.kind[p.j] == kind) & (p.i == p.original[p.j]) for kind in ("crop", "similar", "edit")}
    methods = [m for m in ("exact", "fast", "imagededup") if m in q]
    dists = {m: p.dist(q[m]) for m in methods}
    rows, best = [], {}
    for t in THRESHOLDS:
        row = [f"**{t}**" if t == THRESHOLD else str(t)]
        for m in methods:
            pred = dists[m] <= t
            pt, rt = p.pr(pred, p.true, target)
            pa, ra = p.pr(pred, p.true, scored)
            row += [f"{share(pt)} / {share(rt)}", f"{share(pa)} / {share(ra)}"]
            if m == "exact":
                row += [f"{(pred & w).sum()}/{w.sum()}" for w in with_original.values()]
                best[t] = (pt, rt, pa, ra)
        rows.append(row)
    headers = ["threshold"]
    for m in methods:
        label = {"exact": "datamill exact", "fast": "datamill fast", "imagededup": "imagededup PHash"}[m]
        headers += [f"{label}: P / R (target kinds)", f"{label}: P / R (all kinds)"]
        if m == "exact":
            headers += ["crops found", "similar matched", "edits matched"]
    ones = popcount64(q["exact"])
    notes = [f"datamill phashes with exactly 32 of 64 bits set: {int((ones == 32).sum())}/{len(ones)} (each bit "
             f"says 'above the median of the 64 coefficients'), so distances between them are even and "
             f"thresholds 2k and 2k+1 find the same pairs"]
    ok = [t for t, (pt, rt, _, _) in best.items() if (pt or 0) >= 0.99 and (rt or 0) >= 0.95]
    notes.append(f"thresholds meeting the target (P >= 0.99, R >= 0.95 on resize, recompression, format and "
                 f"EXIF; datamill exact): {', '.join(map(str, ok)) or 'none'}")
    good = {t: v for t, v in best.items() if (v[2] or 0) >= 0.99}
    if good:
        top = max(good, key=lambda t: (round(good[t][3], 4), -t))
        notes.append(f"highest recall over all kinds (incl. crops and brightness) while precision over all "
                     f"kinds stays >= 0.99: threshold {top} (R {good[top][3]:.4f}, P {good[top][2]:.4f})")
    if "imagededup_found" in q:
        for t, pred in q["imagededup_found"].items():
            same = np.array_equal(pred, dists["imagededup"] <= t)
            notes.append(f"imagededup's own find_duplicates at {t}: the same pairs as its hashes' distances "
                         f"<= {t}: {'yes' if same else 'NO'}")
    return table(headers, rows), notes


def kind_table(p: Pairs, q: dict) -> str:
    """Per transformation at the default threshold: recall of (copy, its original) pairs and
    precision of the pairs that touch a copy of that kind; negatives: false matches."""
    columns = [("datamill exact", q["exact"], THRESHOLD), ("datamill fast", q["fast"], THRESHOLD)]
    if "imagededup" in q:
        columns += [("imagededup PHash", q["imagededup"], t) for t in (IMAGEDEDUP_DEFAULT, THRESHOLD)]
    scored = p.among(["original", *DUP_KINDS, *NEGATIVE_KINDS])
    dist_all = {id(h): p.dist(h) for _, h, _ in columns}
    to_original = {id(h): popcount64(h ^ h[p.original]) for _, h, _ in columns}
    rows = []
    for kind in [*DUP_KINDS, *NEGATIVE_KINDS, "edit"]:
        variants = sorted({t["variant"] for t in p.truth if t["kind"] == kind}) if kind in DUP_KINDS else []
        for variant in [None, *variants]:
            files = np.flatnonzero((p.kind == kind) & ((p.variant == variant) if variant else True))
            d_exact = to_original[id(q["exact"])][files]
            label = f"**{kind}**" if variant is None else f"  {variant}"
            row = [label, str(len(files)), f"{np.median(d_exact):.0f} / {d_exact.max()}"]
            for name, h, t in columns:
                found = to_original[id(h)][files] <= t
                if kind in DUP_KINDS:
                    cell = f"R {found.mean():.3f}"
                    if variant is None:
                        touch = p.touching([kind], scored)
                        pr, _ = p.pr(dist_all[id(h)] <= t, p.true, touch)
                        cell = f"P {share(pr, 3)}  " + cell
                else:
                    cell = f"{found.sum()} matched"
                row.append(cell)
            rows.append(row)
    return table(["transformation", "files", "distance to original: median / max (exact)",
                  *[f"{name} at {t}" for name, _, t in columns]], rows)


# -- 4. search -------------------------------------------------------------------------------
def random_masks(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """One uint64 per count: that many distinct random bits set."""
    out = np.empty(len(counts), np.uint64)
    for start in range(0, len(counts), 200_000):
        k = counts[start:start + 200_000]
        r = rng.random((len(k), 64), dtype=np.float32)
        kth = np.sort(r, axis=1)[np.arange(len(k)), k - 1]
        out[start:start + len(k)] = np.packbits(r <= kth[:, None], axis=1).view(">u8").ravel()
    return out


def scene_phashes(count: int) -> np.ndarray:
    """Real phashes of `count` generated scenes (cached)."""
    import multiprocessing
    path = DATA / f"scene-phashes-{count}.npy"
    if path.exists():
        return np.load(path)
    print(f"hashing {count} generated scenes for the clustered search set (once) ...", flush=True)
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        hashes = pool.map(_scene_phash, range(count), 50)
    np.save(path, np.array(hashes, dtype=np.uint64))
    return np.load(path)


def _scene_phash(k: int) -> int:
    from datamill.media.hashes import hash_image
    from datamill.testing.images import make_scene
    return hash_image(make_scene(None, size=(320, 240), seed=500_000 + k)).hashes["phash"]


def search_set(kind: str, n: int, quick: bool) -> Path:
    """n hashes (cached .npz): `hashes`, and `planted` pairs (p, q) of positions 1-8 bits apart."""
    path = DATA / f"search-{kind}-{n}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng({"uniform": 1, "clustered": 2}[kind] * 1000 + n)
    planted = int(n * PLANTED_SHARE)
    n_base = n - planted
    if kind == "uniform":
        base = rng.integers(0, 2**64, n_base, dtype=np.uint64, endpoint=False)
    else:
        centres = scene_phashes(SIZES["centres"][quick])
        base = centres[np.arange(n_base) % len(centres)] ^ random_masks(rng, rng.integers(4, 13, n_base))
    sources = rng.choice(n_base, planted, replace=False)
    hashes = np.concatenate([base, base[sources] ^ random_masks(rng, rng.integers(1, 9, planted))])
    order = rng.permutation(n)  # planted partners anywhere, not at the end
    where = np.empty(n, np.int64)
    where[order] = np.arange(n)
    pairs = np.stack([where[sources], where[n_base + np.arange(planted)]], axis=1)
    np.savez(path, hashes=hashes[order], planted=pairs)
    return path


def search_child(npz: str, n: int, function: str) -> None:
    """In a fresh process: near_pairs (or near_groups) on the set; time, peak RSS, planted
    pairs found, and (near_pairs) a brute-force check of the pairs of 200 random hashes."""
    from datamill.media import hash_index
    data = np.load(npz)
    hashes, planted = data["hashes"][:n], data["planted"]
    before_mb = peak_rss_mb()
    measure = Others()
    result = getattr(hash_index, function)(hashes, THRESHOLD)
    seconds, others = measure.stop()
    peak_mb = peak_rss_mb()
    common = {"seconds": seconds, "others": others, "planted": int(len(planted)), "peak_mb": peak_mb,
              "before_mb": before_mb}
    if function == "near_groups":  # a group id per hash: planted pairs must share one
        found = int(np.sum(result[planted[:, 0]] == result[planted[:, 1]]))
        sizes = np.bincount(result)
        print(json.dumps({**common, "planted_found": found, "groups": int((sizes > 1).sum()),
                          "grouped": int(sizes[sizes > 1].sum())}))
        return
    i, j, dist = result
    # Copies of a value are paired with its first occurrence only: compare first occurrences.
    values, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    first_of = first[inverse]
    near = dist > 0
    keys = np.sort(i[near] * n + j[near])
    a, b = first_of[planted[:, 0]], first_of[planted[:, 1]]
    wanted = np.minimum(a, b) * n + np.maximum(a, b)
    pos = np.clip(np.searchsorted(keys, wanted), 0, max(len(keys) - 1, 0))
    found = (a == b) | (keys[pos] == wanted if len(keys) else False)
    sample = np.random.default_rng(7).choice(len(values), 200, replace=False)
    touching = near & (np.isin(i, first[sample]) | np.isin(j, first[sample]))
    si, sj = i[touching], j[touching]
    missed = extra = 0
    for v in sample:
        f = int(first[v])
        brute = set(first[np.flatnonzero(popcount64(values ^ values[v]) <= THRESHOLD)].tolist()) - {f}
        got = set(sj[si == f].tolist()) | set(si[sj == f].tolist())
        missed += len(brute - got)
        extra += len(got - brute)
    print(json.dumps({**common, "pairs": int(len(i)), "near_pairs": int(near.sum()),
                      "planted_found": int(np.sum(found)), "sample_missed": missed, "sample_extra": extra}))


def search(quick: bool, repeat: int) -> dict:
    n = SIZES["search"][quick]
    out: dict = {}
    sets = [("uniform", n), ("clustered", n)] + [("uniform", m) for m, _ in SIZES["idd_search"][quick] if m != n]
    for kind, size in sets:
        path = search_set(kind, size, quick)
        for function in ("near_pairs", "near_groups") if size == n else ("near_pairs",):
            out[(kind, size, function)] = [run_child([__file__, "--child", "search", str(path), str(size), function])
                                           for _ in range(repeat if size == n else 1)]
    for m, cap in SIZES["idd_search"][quick]:
        path = search_set("uniform", m, quick)
        out[("uniform", m, "imagededup")] = [run_imagededup(["search", str(path), str(m), str(THRESHOLD)],
                                                            timeout=cap)]
    return out


def big_ratio(x: float) -> str:
    return f"{x:,.0f}x" if x >= 100 else ratio(x)


def search_tables(s: dict) -> tuple[str, str]:
    rows = []
    for (kind, n, who), runs in s.items():
        if who == "imagededup" or n < max(k[1] for k in s):
            continue
        r = runs[-1]
        secs = median([x["seconds"] for x in runs])
        peak = max(x["peak_mb"] for x in runs)
        found = (f"{r['near_pairs']:,} pairs (+{r['pairs'] - r['near_pairs']:,} identical)" if "pairs" in r
                 else f"{r['groups']:,} groups of {r['grouped']:,} hashes")
        check = f"{r['sample_missed']} missed, {r['sample_extra']} extra" if "pairs" in r else ""
        rows.append([kind, f"{n:,}", who, found, f"{r['planted_found']:,}/{r['planted']:,}", check,
                     f"{secs:.1f} s (runs: {', '.join(format(x['seconds'], '.1f') for x in runs)})",
                     f"{median([x['others'] for x in runs]):.1f}",
                     f"{peak:,.0f} MB (hashes loaded: {runs[-1]['before_mb']:.0f} MB)",
                     "met" if secs < 120 and peak < 2048 and r["planted_found"] == r["planted"] else "MISSED"])
    big = table(["hashes", "n", "function", "found within 8", "planted pairs found (groups: same group)",
                 "brute-force check of 200 hashes", "time (median)", "others' cores", "peak RSS (VmHWM)",
                 "target < 120 s, < 2 GB, all"], rows)
    rows = []
    for m in sorted({k[1] for k in s if k[2] == "imagededup"}):
        mine = s.get(("uniform", m, "near_pairs"))
        idd = s[("uniform", m, "imagededup")][0]
        mine_s = median([x["seconds"] for x in mine]) if mine else None
        if mine:
            r = mine[-1]
            rows.append([f"{m:,}", "datamill near_pairs (1 process)", f"{mine_s:.2f} s",
                         f"{r['planted_found']:,}/{r['planted']:,}", f"{r['peak_mb']:.0f} MB", "1.00x"])
        if "seconds" in idd:
            rows.append([f"{m:,}", "imagededup find_duplicates (brute_force_cython, 2 workers)",
                         f"{idd['seconds']:.1f} s", f"{idd['planted_found']:,}/{idd['planted']:,}",
                         f"{idd['peak_mb']:.0f} MB (driver)", big_ratio(idd["seconds"] / mine_s) if mine_s else ""])
        elif "timeout" in idd:
            done = idd["done"]
            proj = idd["timeout"] * m / done if done else None
            rows.append([f"{m:,}", "imagededup find_duplicates (brute_force_cython, 2 workers)",
                         f"stopped at {idd['timeout']:.0f} s: {done:,}/{m:,} queries done"
                         + (f"; all {m:,}: ~{proj / 60:.0f} min projected" if proj else ""),
                         "", "", (big_ratio(proj / mine_s) + " (projected)") if proj and mine_s else ""])
        else:
            rows.append([f"{m:,}", "imagededup", idd.get("error", "?")[:200], "", "", ""])
    small = table(["hashes", "method", "time", "planted found", "peak RSS", "time vs datamill"], rows)
    return big, small


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small collection and search: a smoke run")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timed figure (median); 3, or 1 with --quick")
    ap.add_argument("--only", default="speed,job,whole,pairs,search",
                    help="comma-separated: speed,job,whole,pairs,search")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--imagededup", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.imagededup:
        imagededup_main(args.imagededup)
        return
    if args.child:
        if args.child[0] == "job":
            job_child(*args.child[1:])
        elif args.child[0] == "phash-pool":
            phash_pool_child(args.child[1])
        else:
            search_child(args.child[1], int(args.child[2]), args.child[3])
        return
    quick = args.quick
    repeat = args.repeat or (1 if quick else 3)
    parts = set(args.only.split(","))
    speed_repeat = max(repeat, 1 if quick else 7)
    DATA.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"bench/dedup.py: {machine()}, median of {repeat} runs" + (" (quick)" if quick else "")
          + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    root, truth = collection(quick) if parts & {"speed", "job", "pairs"} else (None, [])
    counts: dict[str, int] = {}
    for t in truth:
        counts[t["kind"]] = counts.get(t["kind"], 0) + 1
    if truth:
        print(f"collection: {len(truth)} files in {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
              flush=True)
    if imagededup_python() is not None:
        version = subprocess.run([str(IMAGEDEDUP_VENV / "bin" / "python"), "-c",
                                  "import imagededup, torch; print(imagededup.__version__, torch.__version__)"],
                                 capture_output=True, text=True).stdout.split()
        print(f"imagededup {version[0] if version else '?'} (torch {version[1] if len(version) > 1 else '?'}) "
              f"in {IMAGEDEDUP_VENV}", flush=True)

    if "speed" in parts:
        n = SIZES["speed_files"][quick]
        scenes = [root / t["name"] for t in truth if t["kind"] == "original" and t["name"].endswith(".jpg")][:n]
        for label, files in (("scenes (the collection's originals: flat shapes)", scenes),
                             ("textured scenes (the same plus noise at two scales, like photos)", textured_set(n))):
            rows, _ = speed(files, speed_repeat)
            kb = sum(f.stat().st_size for f in files) / len(files) / 1000
            print(f"\n### Hashing speed, one process (per core): {len(files)} 640x480 JPEGs q90, {label}, "
                  f"{kb:.0f} kB each on average; phash, best of {speed_repeat} interleaved rounds\n", flush=True)
            print(speed_table(rows), flush=True)

    j = None
    if "job" in parts or "pairs" in parts:
        j = jobs(root, len(truth), repeat if "job" in parts else 1)
        if j["imagededup_error"]:
            print(f"imagededup on the collection failed: {j['imagededup_error']}", flush=True)
    if "job" in parts:
        print(f"\n### The whole job on the collection ({len(truth)} files, mixed sizes, 2 workers), "
              f"fresh DST, median of {repeat}\n", flush=True)
        print(job_table(j), flush=True)

    if "whole" in parts:
        w = whole(quick, repeat)
        print(f"\n### The whole job against imagehash, whole processes: {w['files']} 640x480 JPEGs q90 "
              f"(generated scenes; {WHOLE['copies'][quick]} of them copies: {', '.join(WHOLE_KINDS)}; "
              f"{w['in_groups']} files in groups), 2 workers, fresh DST, median of {repeat}, alternating\n",
              flush=True)
        print(whole_table(w), flush=True)

    if "pairs" in parts:
        q = quality(root, truth, j["imagededup_result"] if j else None)
        p = Pairs(truth)
        sweep, notes = sweep_table(p, q)
        print("\n### Pairs by threshold: precision / recall over pairs of files (true pair: same original)\n"
              "\ntarget kinds: originals + resize, recompression, format, EXIF copies + negatives; all kinds: "
              "also crops and brightness; edits (1 shape redrawn) are not scored\n", flush=True)
        print(sweep, flush=True)
        for note in notes:
            print(f"- {note}")
        print(f"\n### Per transformation at threshold {THRESHOLD} (imagededup also at its default "
              f"{IMAGEDEDUP_DEFAULT}): R = (copy, original) pairs found, P = precision of the pairs that touch "
              f"a copy of that kind; negatives: how many fall within the threshold of the original they "
              f"resemble\n", flush=True)
        print(kind_table(p, q), flush=True)
        agree = q["fast"] == q["exact"]
        d = popcount64(q["fast"] ^ q["exact"])
        print(f"- fast against exact, every file: identical hashes {agree.sum()}/{len(agree)}, mean distance "
              f"{d.mean():.2f}, max {d.max()}; on JPEGs only: identical "
              f"{agree[[n.endswith('.jpg') for n in q['names']]].mean():.1%}")
        if q.get("imagededup_missing"):
            print(f"- imagededup hashed no hash for {len(q['imagededup_missing'])} files")
        if j and j["runs"]["exact"]:
            for line in job_quality(Path(j["runs"]["exact"][-1]["dst"]), q["names"], q["exact"], truth):
                print(f"- {line}")

    if "search" in parts:
        s = search(quick, repeat)
        big, small = search_tables(s)
        print(f"\n### Search: all pairs within {THRESHOLD} (near_pairs; near_groups, which the job uses, joins them "
              f"into groups chunk by chunk), one fresh process per run\n", flush=True)
        print(big, flush=True)
        print(f"\n### Search against imagededup (uniform random hashes with 1% planted pairs, threshold "
              f"{THRESHOLD})\n", flush=True)
        print(small, flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
