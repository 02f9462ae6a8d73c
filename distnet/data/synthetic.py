"""Synthetic datasets generated from a seed: ``shapes`` (28x28 images), ``spirals`` and ``gaussians`` (2-D)."""

import numpy as np

SIZE = 28
EDGE = 0.07          # soft edge width, in units where the image spans [-1, 1]
CHUNK = 4096         # samples drawn at once, to bound memory


def balanced_labels(rng, n, k):
    """N labels with every class as equally often as possible, in random order."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def soft_fill(sd):
    """Intensity 1 inside (signed distance < 0), 0 outside, antialiased over EDGE."""
    return np.clip(0.5 - sd / EDGE, 0.0, 1.0)


def soft_stroke(sd, w):
    """Intensity of a stroke of half-width W along the zero set of SD."""
    return soft_fill(np.abs(sd) - w)


def polygon_sd(u, v, s, sides):
    """Approximate signed distance to a regular polygon with a vertex up and circumradius S."""
    angles = np.pi / 2 + np.pi / sides + 2 * np.pi * np.arange(sides) / sides
    proj = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)
    return proj.max(axis=-1) - s * np.cos(np.pi / sides)


def bars_union(u, v, s, w):
    """Signed distance to a plus: a horizontal and a vertical bar of half-length S and half-width W."""
    return np.minimum(np.maximum(np.abs(u) - w, np.abs(v) - s), np.maximum(np.abs(v) - w, np.abs(u) - s))


def shape_intensity(kind, u, v, s, w):
    """Intensity of shape class KIND at local coordinates (U, V) for sizes S and stroke half-widths W."""
    rho = np.hypot(u, v)
    if kind == 0:
        return soft_fill(rho - s)
    if kind == 1:
        return soft_stroke(rho - s, w)
    if kind in (2, 3):
        sd = np.maximum(np.abs(u), np.abs(v)) - 0.75 * s
        return soft_fill(sd) if kind == 2 else soft_stroke(sd, w)
    if kind in (4, 5):
        sd = polygon_sd(u, v, s, 3)
        return soft_fill(sd) if kind == 4 else soft_stroke(sd, w)
    if kind == 6:
        return soft_fill(bars_union(u, v, s, w))
    if kind == 7:
        r = np.sqrt(0.5)
        return soft_fill(bars_union(r * (u - v), r * (u + v), s, w))
    if kind == 8:
        phi = np.arctan2(u, v)
        return soft_fill(rho - s * (0.6 + 0.4 * np.cos(5 * phi)))
    if kind == 9:
        return soft_fill(np.maximum(np.abs(u) - s, np.abs(np.abs(v) - 0.45 * s) - w))
    raise ValueError(f"unknown shape class {kind}")


def segment_strokes(rng, n, gx, gy, count):
    """Intensity of COUNT random thin line segments per image (clutter), shape (n, SIZE, SIZE)."""
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for _ in range(count):
        a = rng.uniform(-1, 1, (n, 2, 1, 1))
        d = rng.uniform(-0.6, 0.6, (n, 2, 1, 1))
        px, py = gx - a[:, 0], gy - a[:, 1]
        t = np.clip((px * d[:, 0] + py * d[:, 1]) / (d[:, 0] ** 2 + d[:, 1] ** 2 + 1e-9), 0, 1)
        dist = np.hypot(px - t * d[:, 0], py - t * d[:, 1])
        out = np.maximum(out, soft_stroke(dist, 0.03) * rng.uniform(0.2, 0.6, (n, 1, 1)))
    return out


def draw_shapes(rng, labels):
    """uint8 images (n, 1, SIZE, SIZE) of the shape classes in LABELS, with clutter and noise."""
    n = len(labels)
    coords = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
    gx, gy = np.meshgrid(coords, -coords)
    cx, cy = rng.uniform(-0.3, 0.3, (2, n, 1, 1))
    s = rng.uniform(0.4, 0.72, (n, 1, 1))
    w = rng.uniform(0.06, 0.15, (n, 1, 1))
    theta = np.deg2rad(rng.uniform(-15, 15, (n, 1, 1)))
    ink = rng.uniform(0.55, 1.0, (n, 1, 1))
    u = np.cos(theta) * (gx - cx) + np.sin(theta) * (gy - cy)
    v = -np.sin(theta) * (gx - cx) + np.cos(theta) * (gy - cy)
    img = np.zeros((n, SIZE, SIZE), np.float32)
    for kind in range(10):
        m = labels == kind
        if m.any():
            img[m] = shape_intensity(kind, u[m], v[m], s[m], w[m]) * ink[m]
    img = np.maximum(img, segment_strokes(rng, n, gx, gy, count=2))
    img += rng.normal(0, 0.06, img.shape).astype(np.float32)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)[:, None]


def shapes(rng, n):
    """The ``shapes`` set: (uint8 images (n, 1, 28, 28), int64 labels (n,)) with 10 balanced classes."""
    y = balanced_labels(rng, n, 10)
    x = np.empty((n, 1, SIZE, SIZE), np.uint8)
    for start in range(0, n, CHUNK):
        x[start:start + CHUNK] = draw_shapes(rng, y[start:start + CHUNK])
    return x, y


def spirals(rng, n, turns=1.5, noise=0.04):
    """Two interleaved spirals: float32 points (n, 2) and int64 labels (n,) in {0, 1}."""
    y = balanced_labels(rng, n, 2)
    r = np.sqrt(rng.uniform(0.02, 1.0, n))
    angle = 2 * np.pi * turns * r + np.pi * y
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) + rng.normal(0, noise, (n, 2))
    return x.astype(np.float32), y


def gaussians(rng, n, k=4, radius=2.5, std=1.0):
    """K gaussian blobs with centres evenly on a circle: float32 points (n, 2) and int64 labels (n,)."""
    y = balanced_labels(rng, n, k)
    angles = 2 * np.pi * np.arange(k) / k
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centres[y] + rng.normal(0, std, (n, 2))).astype(np.float32), y


GENERATORS = {"shapes": shapes, "spirals": spirals, "gaussians": gaussians}


def generate(name, seed, split, n, **kw):
    """Split SPLIT ('train' or 'test') of synthetic set NAME: independent streams per (seed, split)."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split]])
    return GENERATORS[name](rng, n, **kw)
