"""Synthetic jobs for the storage benchmark, generated once with numpy and loaded into both schemas.

Everything is vectorised over whole columns (10M rows take well under a minute here); nothing loops in
Python per row. The shape follows the seed design's measurement (docs/storage.md) and what this project
writes in production:

- 50k users with a Zipf-like load (rank^-0.8: the busiest user has about 2.5% of all jobs);
- 180 days ending now, the rate growing about 85% over the period (so the oldest month holds about
  1.25M of 10M jobs, as in the design's retention figure) with a mild daily cycle;
- ids: UUIDv7 whose millisecond timestamp is created_at, the bit layout of shared.ids.uuid7 (ours),
  and random UUIDv4 (the design's);
- statuses: jobs older than an hour are terminal (97% completed, 3% failed); in the last hour a
  share is still pending or processing;
- params as ProcessingParams.canonical() writes them, with threshold 0.9 on 10% of jobs (the design's
  "COUNT of a containment matching 1M rows");
- 8% of uploads repeat an earlier image (same content hash, size and format); most of those ask for
  the same parameters and reuse the stored result (reused_result, a few ms of "processing");
- 5k tags, two thirds named "product-..." (the design's 'product' matched 67% of its tags), about two
  tags per job from a Zipf-like popularity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from shared.contracts.events import CutoutFormat, ProcessingParams
from shared.storage.keys import ObjectKeys, model_slug

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I16 = npt.NDArray[np.int16]
U8 = npt.NDArray[np.uint8]
BOOL = npt.NDArray[np.bool_]

# Status codes in the generated arrays (and the staging table); names as the CHECK constraint spells them.
PENDING, PROCESSING, COMPLETED, FAILED = 0, 1, 2, 3
STATUS_NAMES = ("pending", "processing", "completed", "failed")

MODEL_NAME = "briaai/RMBG-2.0"
# Two revisions of the model: the second deployed two months before the end of the period.
MODEL_REVISIONS = ("2f6a1c0e9d4b7a8c3e5f1d2b6a9c0e4f7d8b1a3c", "9c1e7b3d5a2f8e6c4b0d9a7f1e3c5b2d8a6f4e0c")
SOURCES = ("http", "upload")
ORIGINAL_EXTS = ("jpg", "png", "webp")
# The persister's default cut-out format (services/persister/settings.py) and its file extensions
# (shared.imaging.CUTOUT_CONTENT_TYPES).
DEFAULT_CUTOUT = CutoutFormat.WEBP_LOSSLESS
CUTOUT_EXT = {CutoutFormat.PNG: "png", CutoutFormat.WEBP_LOSSLESS: "webp", CutoutFormat.WEBP: "webp"}

ERRORS = (
    "",
    "image rejected: cannot identify image file (not a JPEG, PNG or WebP)",
    "inference timed out after 3 attempts (worker lease expired)",
    "CUDA out of memory: tried to allocate 1.50 GiB (GPU 0; 23.65 GiB total capacity)",
    "image rejected: 12000x9000 exceeds the 8192 px per side limit",
    "source object not found in storage (NoSuchKey)",
)
ERROR_P = (0.30, 0.25, 0.15, 0.15, 0.15)

# threshold -> probability (None: the soft matte). 0.9 is 10% of jobs.
THRESHOLDS: dict[float | None, float] = {
    None: 0.50, 0.5: 0.18, 0.9: 0.10, 0.8: 0.08, 0.7: 0.05, 0.95: 0.03, 0.6: 0.02, 0.3: 0.01, 0.4: 0.01,
}
OTHER_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)  # 2% together
FORMATS: dict[CutoutFormat | None, float] = {
    None: 0.60, CutoutFormat.PNG: 0.18, CutoutFormat.WEBP_LOSSLESS: 0.12, CutoutFormat.WEBP: 0.10,
}
WEBP_QUALITY: dict[int | None, float] = {None: 0.50, 80: 0.25, 90: 0.15, 75: 0.10}

# (width, height) -> probability: phone photos, square product shots, screen sizes.
SIZES: dict[tuple[int, int], float] = {
    (1024, 1024): 0.25, (1080, 1080): 0.10, (1920, 1080): 0.10, (1080, 1920): 0.05, (3024, 4032): 0.12,
    (4032, 3024): 0.06, (4000, 3000): 0.05, (800, 800): 0.07, (1200, 1200): 0.06, (2048, 2048): 0.05,
    (640, 480): 0.04, (1280, 720): 0.05,
}
# Original format -> (probability, median bytes per pixel, log-sd).
ORIGINAL_FORMATS = ((0.70, 0.30, 0.35), (0.22, 1.60, 0.30), (0.08, 0.20, 0.35))

PRODUCT_NOUNS = (
    "shoes sneakers boots sandals heels bag handbag backpack wallet belt watch ring necklace earrings bracelet "
    "sunglasses hat cap scarf gloves jacket coat dress shirt tshirt hoodie sweater jeans pants shorts skirt "
    "socks lamp chair table sofa bed pillow blanket rug vase mug cup plate bowl bottle glass kettle toaster "
    "blender phone laptop tablet headphones speaker camera keyboard mouse monitor charger cable case cover "
    "toy doll puzzle ball bike helmet tent stroller perfume lipstick cream serum shampoo soap candle plant "
    "pot book notebook pen bracelet pendant brooch tie suit blazer vest coat-rack shelf mirror clock frame "
    "curtain towel basket box jar spoon knife fork pan wok grill drone console controller guitar"
).split()
ATTRIBUTES = (
    "red blue green black white grey pink brown beige gold silver navy yellow purple orange leather "
    "wooden metal glass cotton wool silk kids men women mini large vintage new sale summer winter"
).split()
OTHER_CATEGORIES = (
    "portrait people selfie family wedding food drink dessert car motorcycle pet dog cat bird horse "
    "real-estate interior architecture landscape nature flower tree logo icon illustration event concert "
    "sport fitness travel beach city art painting sculpture jewelry-shoot studio passport id-photo avatar "
    "marketing banner social-media catalog ecommerce amazon-listing ebay etsy shopify"
).split()


@dataclass(frozen=True)
class Shape:
    """The knobs of the generated data (defaults: the design's measured setting)."""

    jobs: int = 10_000_000
    users: int = 50_000
    tags: int = 5_000
    days: int = 180
    user_zipf: float = 0.8
    tag_zipf: float = 1.0
    growth: float = 0.857  # rate at the end / rate at the start - 1
    duplicate_share: float = 0.08
    reuse_share: float = 0.6  # of duplicates, the share that asks for the same parameters
    failed_share: float = 0.03
    seed: int = 20261127


@dataclass(frozen=True)
class ParamCombo:
    code: int
    params: dict[str, object]
    params_hash: str
    threshold_tag: str
    cutout_format: str  # as in the processed key: the requested format or the persister's default
    cutout_ext: str
    probability: float


@dataclass
class JobsData:
    """Column arrays of the generated jobs, in created_at order (row i is the i-th job)."""

    shape: Shape
    end: datetime
    created_ms: I64  # ms since the Unix epoch, sorted
    job7: U8  # (n, 16) UUIDv7 bytes
    job4: U8  # (n, 16) UUIDv4 bytes
    user_no: I32  # 1..users
    status: npt.NDArray[np.int8]
    started_off_ms: I32  # started_at - created_at, -1 for none
    finished_off_ms: I32  # completed_at - created_at, -1 for none
    processing_ms: I32  # -1 for none (only completed jobs have one)
    width: I32  # 0 for none (an image rejected at intake)
    height: I32
    file_kb: I32
    original_bytes: I32
    ext_code: npt.NDArray[np.int8]
    params_code: I16
    sha: U8  # (n, 32)
    mask_bytes: I32  # -1 for none
    processed_bytes: I32
    model_code: npt.NDArray[np.int8]
    source_code: npt.NDArray[np.int8]
    attempts: I16
    reused: BOOL
    error_code: npt.NDArray[np.int8]
    tag_job: I64 = field(default_factory=lambda: np.zeros(0, np.int64))  # row index into the jobs
    tag_id: I32 = field(default_factory=lambda: np.zeros(0, np.int32))  # 1..tags

    @property
    def n(self) -> int:
        return int(self.created_ms.shape[0])

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.shape.days)


def param_combos() -> list[ParamCombo]:
    """Every parameter combination with its probability; params and hash exactly as the API stores them."""
    thresholds: dict[float | None, float] = dict(THRESHOLDS)
    for t in OTHER_THRESHOLDS:
        thresholds[t] = 0.02 / len(OTHER_THRESHOLDS)
    combos: list[ParamCombo] = []
    for (threshold, p_t), (fmt, p_f) in itertools.product(thresholds.items(), FORMATS.items()):
        qualities = WEBP_QUALITY if fmt is CutoutFormat.WEBP else {None: 1.0}
        for quality, p_q in qualities.items():
            params = ProcessingParams(threshold=threshold, cutout_format=fmt, webp_quality=quality)
            effective = fmt or DEFAULT_CUTOUT
            combos.append(
                ParamCombo(
                    code=len(combos),
                    params=params.canonical(),
                    params_hash=params.digest(),
                    threshold_tag=ObjectKeys.threshold_tag(threshold),
                    cutout_format=effective.value,
                    cutout_ext=CUTOUT_EXT[effective],
                    probability=p_t * p_f * p_q,
                )
            )
    total = sum(c.probability for c in combos)
    assert abs(total - 1.0) < 1e-9, total
    return combos


def tag_names(count: int, seed: int) -> list[str]:
    """``count`` distinct lowercase tag names, two thirds of them 'product-...'."""
    rng = np.random.default_rng(seed + 1)
    names: list[str] = []
    seen: set[str] = set()
    product_target = round(count * 2 / 3)

    def add(name: str) -> None:
        if name not in seen and len(name) <= 64:
            seen.add(name)
            names.append(name)

    while len(names) < product_target:
        noun = str(rng.choice(PRODUCT_NOUNS))
        roll = rng.random()
        if roll < 0.15:
            add(f"product-{noun}")
        elif roll < 0.75:
            add(f"product-{noun}-{rng.choice(ATTRIBUTES)}")
        else:
            add(f"product-{noun}-{int(rng.integers(1, 400))}")
    while len(names) < count:
        cat = str(rng.choice(OTHER_CATEGORIES))
        roll = rng.random()
        if roll < 0.1:
            add(cat)
        elif roll < 0.6:
            add(f"{cat}-{rng.choice(ATTRIBUTES)}")
        else:
            add(f"{cat}-{int(rng.integers(1, 200))}")
    order = rng.permutation(len(names))  # popularity rank is independent of the category
    return [names[i] for i in order]


def _zipf_choice(rng: np.random.Generator, n_items: int, s: float, size: int) -> I64:
    """Indices 0..n_items-1 drawn with weight (rank+1)^-s, ranks shuffled over the items."""
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size), side="right")
    ranks = np.minimum(ranks, n_items - 1)
    perm = rng.permutation(n_items)
    return perm[ranks].astype(np.int64)


def _created_ms(rng: np.random.Generator, shape: Shape, end: datetime) -> I64:
    """Sorted creation times: linear growth over the period times a daily cycle (peak 14:00 UTC)."""
    end_ms = int(end.timestamp() * 1000)
    span_ms = shape.days * 86_400_000
    b = shape.growth
    out: list[I64] = []
    have = 0
    while have < shape.jobs:
        m = int((shape.jobs - have) * 1.4) + 1000
        # Inverse CDF of density (1 + b x) on [0, 1).
        u = rng.random(m)
        x = (np.sqrt(1.0 + b * (2.0 + b) * u) - 1.0) / b
        t = end_ms - span_ms + (x * span_ms).astype(np.int64)
        hour = (t // 3_600_000) % 24
        accept = rng.random(m) < (0.75 + 0.25 * np.cos((hour - 14) * np.pi / 12))
        t = t[accept & (t < end_ms)]
        out.append(t[: shape.jobs - have])
        have += int(out[-1].shape[0])
    return np.sort(np.concatenate(out))


def _uuid7(rng: np.random.Generator, ms: I64) -> U8:
    """shared.ids.uuid7's layout: 48-bit ms, version 7, 12 random bits, variant 0b10, 62 random bits."""
    n = ms.shape[0]
    rand_a = rng.integers(0, 1 << 12, n, dtype=np.uint64)
    rand_b = rng.integers(0, 1 << 62, n, dtype=np.uint64)
    hi = ((ms.astype(np.uint64) & np.uint64((1 << 48) - 1)) << np.uint64(16)) | np.uint64(0x7 << 12) | rand_a
    lo = np.uint64(0b10 << 62) | rand_b
    out = np.empty((n, 2), dtype=">u8")
    out[:, 0] = hi
    out[:, 1] = lo
    return out.view(np.uint8).reshape(n, 16)


def _uuid4(rng: np.random.Generator, n: int) -> U8:
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return raw


def _lognormal(rng: np.random.Generator, median: float | npt.NDArray[np.float64], sigma: float, n: int
               ) -> npt.NDArray[np.float64]:
    return np.asarray(median * np.exp(rng.normal(0.0, sigma, n)), dtype=np.float64)


def generate(shape: Shape, end: datetime | None = None) -> JobsData:
    """The whole data set, deterministic for a given ``shape`` and ``end``."""
    rng = np.random.default_rng(shape.seed)
    end = (end or datetime.now(UTC)).replace(microsecond=0)
    n = shape.jobs
    end_ms = int(end.timestamp() * 1000)

    created_ms = _created_ms(rng, shape, end)
    job7 = _uuid7(rng, created_ms)
    job4 = _uuid4(rng, n)
    user_no = (_zipf_choice(rng, shape.users, shape.user_zipf, n) + 1).astype(np.int32)

    # Images: size, format, bytes, content hash. Duplicates copy all of it from an earlier job.
    size_keys = list(SIZES)
    size_idx = rng.choice(len(size_keys), n, p=list(SIZES.values()))
    dims = np.array(size_keys, dtype=np.int32)[size_idx]
    width, height = dims[:, 0].copy(), dims[:, 1].copy()
    ext_code = rng.choice(len(ORIGINAL_FORMATS), n, p=[f[0] for f in ORIGINAL_FORMATS]).astype(np.int8)
    bpp_median = np.array([f[1] for f in ORIGINAL_FORMATS])[ext_code]
    pixels = width.astype(np.float64) * height
    original_bytes = np.clip(pixels * _lognormal(rng, bpp_median, 0.33, n), 20_000, 2_000_000_000).astype(np.int32)
    sha = rng.integers(0, 256, (n, 32), dtype=np.uint8)

    src = np.arange(n, dtype=np.int64)
    dup = rng.random(n) < shape.duplicate_share
    dup[0] = False
    earlier = (rng.random(n) * np.arange(n)).astype(np.int64)
    src[dup] = earlier[dup]
    while True:  # a duplicate of a duplicate points to the first upload (pointer jumping)
        nxt = src[src]
        if np.array_equal(nxt, src):
            break
        src = nxt
    for arr in (width, height, ext_code, original_bytes):
        arr[:] = arr[src]
    sha = sha[src]
    pixels = width.astype(np.float64) * height
    file_kb = (original_bytes // 1024).astype(np.int32)

    combos = param_combos()
    params_code = rng.choice(len(combos), n, p=[c.probability for c in combos]).astype(np.int16)
    same_params = dup & (rng.random(n) < shape.reuse_share)
    params_code[same_params] = params_code[src[same_params]]

    model_code = (created_ms >= end_ms - 60 * 86_400_000).astype(np.int8)
    source_code = (rng.random(n) < 0.15).astype(np.int8)  # 15% arrive from the upload topic
    attempts = np.ones(n, dtype=np.int16)
    roll = rng.random(n)
    attempts[roll < 0.015] = 2
    attempts[roll < 0.003] = 3

    # Status: terminal unless created in the last hour, where a backlog is still pending/processing.
    status = np.full(n, COMPLETED, dtype=np.int8)
    status[rng.random(n) < shape.failed_share] = FAILED
    recent = created_ms >= end_ms - 3_600_000
    r = rng.random(n)
    age_share = (end_ms - created_ms) / 3_600_000  # 0 (just now) .. 1 (an hour ago)
    status[recent & (r < 0.55 * (1 - age_share))] = PENDING
    status[recent & (r >= 0.55 * (1 - age_share)) & (r < 0.75 * (1 - age_share))] = PROCESSING

    error_code = np.zeros(n, dtype=np.int8)
    failed = status == FAILED
    error_code[failed] = rng.choice(len(ERROR_P), int(failed.sum()), p=list(ERROR_P)).astype(np.int8) + 1
    rejected = error_code == 1  # refused at intake: never decoded, never started
    width[rejected] = 0
    height[rejected] = 0
    source_code[rejected] = 1
    attempts[error_code == 2] = 3

    # Times: queue wait, processing; a reused result takes a few ms (a lookup, no inference).
    wait = np.clip(_lognormal(rng, 150.0, 1.0, n), 5, 600_000).astype(np.int64)
    proc = np.clip(_lognormal(rng, 300.0 + 35.0 * pixels / 1e6, 0.35, n), 60, 30_000).astype(np.int64)
    reused = (status == COMPLETED) & same_params & (status[src] == COMPLETED) & (model_code[src] == model_code)
    proc[reused] = rng.integers(2, 20, int(reused.sum()))
    started_off = np.where(status == PENDING, -1, wait)
    started_off[rejected] = -1
    finished_off = np.where(status == COMPLETED, wait + proc, -1)
    finished_off[failed] = np.where(rejected[failed], rng.integers(20, 200, int(failed.sum())),
                                    wait[failed] + proc[failed] * attempts[failed])
    # Nothing finishes after "now": a job still running at the end stays processing.
    late = (finished_off >= 0) & (created_ms + finished_off > end_ms)
    status[late & ~rejected] = PROCESSING
    error_code[late & ~rejected] = 0
    reused[late] = False
    finished_off[late & ~rejected] = -1
    started_off[(started_off >= 0) & (created_ms + started_off > end_ms)] = -1
    status[(status == PROCESSING) & (started_off < 0)] = PENDING
    processing_ms = np.where(status == COMPLETED, proc, -1).astype(np.int32)

    # Result sizes: the mask PNG (binary masks compress better) and the cut-out by its format.
    thresholded = np.array([c.threshold_tag != "soft" for c in combos])[params_code]
    mask_bpp = np.where(thresholded, 0.012, 0.05)
    mask_bytes = (pixels * _lognormal(rng, mask_bpp, 0.4, n)).astype(np.int64)
    cut_bpp = np.array([{"png": 1.6, "webp_lossless": 0.9, "webp": 0.12}[c.cutout_format] for c in combos])
    processed_bytes = (pixels * _lognormal(rng, cut_bpp[params_code], 0.3, n)).astype(np.int64)
    completed = status == COMPLETED
    mask_out: I32 = np.where(completed, np.clip(mask_bytes, 200, 2**31 - 1), -1).astype(np.int32)
    processed_out: I32 = np.where(completed, np.clip(processed_bytes, 1000, 2**31 - 1), -1).astype(np.int32)

    data = JobsData(
        shape=shape, end=end, created_ms=created_ms, job7=job7, job4=job4, user_no=user_no, status=status,
        started_off_ms=started_off.astype(np.int32), finished_off_ms=finished_off.astype(np.int32),
        processing_ms=processing_ms, width=width, height=height, file_kb=file_kb,
        original_bytes=original_bytes, ext_code=ext_code, params_code=params_code, sha=sha,
        mask_bytes=mask_out, processed_bytes=processed_out, model_code=model_code,
        source_code=source_code, attempts=attempts, reused=reused, error_code=error_code,
    )
    _tags(rng, data)
    return data


def _tags(rng: np.random.Generator, data: JobsData) -> None:
    """0-4 tags per job (mean about 1.95), Zipf-like popularity, no tag twice on one job."""
    n = data.n
    per_job = rng.choice(5, n, p=[0.15, 0.20, 0.30, 0.25, 0.10])
    job = np.repeat(np.arange(n, dtype=np.int64), per_job)
    tag = _zipf_choice(rng, data.shape.tags, data.shape.tag_zipf, int(job.shape[0])) + 1
    key = np.unique(job * 65_536 + tag)
    data.tag_job = key // 65_536
    data.tag_id = (key % 65_536).astype(np.int32)


def model_slugs() -> list[str]:
    return [model_slug(MODEL_NAME, rev) for rev in MODEL_REVISIONS]
