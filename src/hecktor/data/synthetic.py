"""A synthetic HECKTOR release: PET/CT, labels, clinical tables and a hidden oracle.

Anatomy is described in physical millimetres around the brain centroid (LPS: +x patient left,
+y posterior, +z superior) and sampled onto each scanner's grid, so the same patient looks alike at
any resolution. What makes the tasks learnable and not trivial:

* CT on one grid in HU (air, fat, muscle, bone, airway); PET on a coarser grid with another origin and
  extent, blurred by a scanner PSF, noisy, in SUV-like units scaled by a per-centre calibration.
* High uptake in the brain (what the official crop looks for) and physiological uptake in tonsils and
  salivary glands, which a PET threshold mistakes for tumour.
* One lobulated, heterogeneous primary (absent in a few percent), zero to several nodes, some under
  100 mm^3, some touching.
* Centres differ in resolution, noise, calibration and clinical mix (domain shift).
* HPV status is drawn from a logistic model of age, sex, smoking and image features (site, primary
  volume, cystic nodes); RFS from a Weibull proportional-hazards model of image and clinical features
  with independent censoring (about 20 %). The true log-hazard and HPV probability go to an oracle
  CSV that no training stage reads.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from hecktor import io
from hecktor.config import SynthConfig
from hecktor.data.layout import TASK_CSV, TASK_DIR, case_paths
from hecktor.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Centre:
    """Scanner and population traits of one synthetic centre."""

    weight: float  # share of the cohort
    ct_inplane: float  # factor on the profile's CT in-plane spacing
    pet_spacing: float  # factor on the profile's PET spacing
    psf_fwhm_mm: float
    pet_noise: float  # relative noise at SUV 1
    calibration: float  # multiplies true SUV (scanner/reconstruction bias)
    ct_noise_hu: float
    hpv_shift: float  # logit shift of HPV prevalence
    smoker_rate: float
    age_mean: float
    alcohol_recorded: bool


CENTRES: dict[str, Centre] = {
    "CHUM": Centre(0.13, 1.00, 1.00, 6.0, 0.10, 1.00, 15, 0.3, 0.35, 62, True),
    "CHUP": Centre(0.10, 0.90, 1.00, 5.0, 0.08, 1.10, 12, -0.2, 0.55, 64, True),
    "CHUS": Centre(0.10, 1.00, 1.25, 7.0, 0.14, 0.90, 18, 0.0, 0.45, 63, True),
    "HGJ": Centre(0.09, 1.10, 1.00, 6.5, 0.12, 1.00, 20, 0.2, 0.40, 61, False),
    "HMR": Centre(0.07, 1.00, 1.25, 8.0, 0.18, 0.85, 22, -0.6, 0.65, 65, False),
    "MDA": Centre(0.38, 0.95, 0.90, 5.5, 0.09, 1.05, 12, 0.8, 0.30, 59, True),
    "USZ": Centre(0.13, 1.05, 1.00, 5.0, 0.07, 1.15, 14, -0.4, 0.50, 64, True),
}

# Sites of the primary tumour (centre offset from the brain centroid, mm) and their HPV logit term.
SITES = {
    "tonsil_left": ((18.0, 0.0, -72.0), 1.2),
    "tonsil_right": ((-18.0, 0.0, -72.0), 1.2),
    "base_of_tongue": ((0.0, -14.0, -85.0), 0.9),
    "larynx": ((0.0, -12.0, -118.0), -1.4),
}
HPV_INTERCEPT = 1.85


@dataclass
class SyntheticPatient:
    """Latent truth of one synthetic patient, drawn before any image is rendered."""

    pid: str
    centre: str
    seed: int
    brain: np.ndarray  # brain centroid, mm (physical)
    scale: float
    site: str | None
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # centre, radii, rotation
    lobe_wobble: np.ndarray
    nodes: list[tuple[np.ndarray, float, bool]]  # centre, radius, cystic
    suv_primary: float
    age: float
    male: int
    smoker: int
    alcohol: int
    performance: int
    m_stage: str
    treatment: str
    hpv_probability: float
    hpv: int
    log_hazard: float
    rfs_days: float
    relapse: int
    direction: tuple[float, ...]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix with angles within +-max_deg about each axis."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_primary(
    rng: np.random.Generator, scale: float
) -> tuple[str | None, list[tuple[np.ndarray, np.ndarray, np.ndarray]], float]:
    """The primary's site (None: no primary), its lobes (centre, radii, rotation) and volume (cc)."""
    site = None if rng.random() < 0.04 else str(rng.choice(list(SITES), p=[0.28, 0.28, 0.24, 0.20]))
    lobes = []
    primary_cc = 0.0
    if site is not None:
        centre_mm = np.array(SITES[site][0]) * scale + rng.normal(0, 3, 3)
        volume_cc = float(np.exp(rng.normal(math.log(14.0), 0.7)))
        primary_cc = volume_cc
        radius = (3 * volume_cc * 1000 / (4 * math.pi)) ** (1 / 3)
        for k in range(int(rng.integers(2, 5))):
            offset = rng.normal(0, 0.35 * radius, 3) if k else np.zeros(3)
            radii = radius * rng.uniform(0.55, 0.95, 3)
            lobes.append((centre_mm + offset, radii, _rotation(rng, 90)))
    return site, lobes, primary_cc


def _draw_nodes(rng: np.random.Generator, scale: float) -> list[tuple[np.ndarray, float, bool]]:
    """Zero to seven lymph nodes (centre, radius, cystic); some small, some touching."""
    n_nodes = int(min(rng.poisson(1.8), 7))
    nodes: list[tuple[np.ndarray, float, bool]] = []
    for _ in range(n_nodes):
        if nodes and rng.random() < 0.3:  # touching the previous node
            prev_c, prev_r, _ = nodes[-1]
            r = float(rng.uniform(3.0, 8.0))
            direction = rng.normal(0, 1, 3)
            direction /= np.linalg.norm(direction)
            nodes.append((prev_c + direction * (prev_r + r) * 0.97, r, False))
            continue
        side = rng.choice([-1.0, 1.0])
        z = rng.uniform(-130, -65)
        centre_mm = np.array([side * rng.uniform(34, 50), rng.uniform(-8, 18), z]) * scale
        r = float(rng.uniform(1.9, 2.8)) if rng.random() < 0.2 else float(rng.uniform(4.0, 13.0))
        nodes.append((centre_mm, r, bool(r > 7 and rng.random() < 0.5)))
    return nodes


def _hpv_probability(
    c: Centre, age: float, male: int, smoker: int, site: str | None, cystic: bool,
    primary_cc: float,
) -> float:  # fmt: skip
    """The true HPV probability: a logistic model of clinical and image features."""
    site_term = SITES[site][1] if site else 0.0
    hpv_logit = (
        HPV_INTERCEPT
        + c.hpv_shift
        - 0.06 * (age - 60)
        + 0.7 * male
        - 1.1 * smoker
        + site_term
        + 0.9 * cystic
        - 0.5 * math.log(max(primary_cc, 1.0) / 14.0)
    )
    return 1 / (1 + math.exp(-hpv_logit))


def _log_hazard(
    hpv: int, primary_cc: float, nodes: list[tuple[np.ndarray, float, bool]], suv_primary: float,
    age: float, smoker: int, m_stage: str, performance: int,
) -> float:  # fmt: skip
    """The true log-hazard of relapse: a proportional-hazards model of image and clinical
    features."""
    node_cc = sum(4 / 3 * math.pi * r**3 for _, r, _ in nodes) / 1000
    return (
        1.1 * (1 - hpv)
        + 0.45 * math.log((primary_cc + 1) / 15.0)
        + 0.35 * math.log(1 + node_cc)
        + 0.25 * (suv_primary - 11.0) / 4.0
        + 0.025 * (age - 60)
        + 0.35 * smoker
        + 1.2 * (m_stage == "M1")
        + 0.3 * performance
    )


def _draw_rfs(rng: np.random.Generator, log_hazard: float) -> tuple[float, int]:
    """Relapse-free survival (days) and whether it ended in a relapse (else censored)."""
    # Weibull PH: S(t) = exp(-(t/lam)^k * exp(eta)); administrative + dropout censoring.
    k, lam = 1.3, 3000.0
    event_time = lam * (-math.log(rng.random()) / math.exp(log_hazard)) ** (1 / k)
    censor_time = rng.uniform(400, 6000)
    relapse = int(event_time <= censor_time)
    rfs = max(1.0, round(min(event_time, censor_time)))
    return float(rfs), relapse


def _draw_direction(rng: np.random.Generator, rotated_fraction: float) -> tuple[float, ...]:
    """The CT's direction cosines: identity, or for ``rotated_fraction`` a small tilt, sometimes
    with the axial plane flipped."""
    direction = tuple(np.eye(3).ravel())
    if rng.random() < rotated_fraction:
        flip = np.diag([-1.0, -1.0, 1.0]) if rng.random() < 0.5 else np.eye(3)
        direction = tuple((flip @ _rotation(rng, 8)).ravel())
    return direction


def draw_patient(index: int, cfg: SynthConfig) -> SyntheticPatient:
    """Draw one patient's latent anatomy, clinical data and outcome; deterministic in (seed, index).

    All draws come from one generator in a fixed order (the helpers take it in turn): reordering
    them would change every synthetic cohort.
    """
    rng = np.random.default_rng([cfg.seed, index])
    names = list(cfg.centres)
    weights = np.array([CENTRES[n].weight for n in names])
    centre = names[rng.choice(len(names), p=weights / weights.sum())]
    c = CENTRES[centre]
    pid = f"{centre}-{index + 1:03d}"

    scale = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    brain = np.array([rng.normal(0, 6), rng.normal(0, 6), rng.normal(0, 8)])
    age = float(np.clip(rng.normal(c.age_mean, 9.0), 30, 90))
    male = int(rng.random() < 0.82)
    smoker = int(rng.random() < c.smoker_rate + (0.1 if male else 0.0))
    alcohol = int(rng.random() < (0.55 if smoker else 0.25))
    performance = int(rng.choice(4, p=[0.55, 0.35, 0.08, 0.02]))
    m_stage = str(rng.choice(["M0", "M1", "Mx"], p=[0.93, 0.03, 0.04]))

    site, lobes, primary_cc = _draw_primary(rng, scale)
    lobe_wobble = rng.uniform(0, 2 * math.pi, 6)
    nodes = _draw_nodes(rng, scale)
    cystic = any(n[2] for n in nodes)

    hpv_probability = _hpv_probability(c, age, male, smoker, site, cystic, primary_cc)
    hpv = int(rng.random() < hpv_probability)
    treatment = str(rng.choice(["Chemoradiotherapy", "Radiotherapy", "Surgery"], p=[0.7, 0.2, 0.1]))
    suv_primary = float(np.clip(rng.lognormal(math.log(11.0), 0.35), 4.0, 30.0))

    log_hazard = _log_hazard(hpv, primary_cc, nodes, suv_primary, age, smoker, m_stage, performance)
    rfs, relapse = _draw_rfs(rng, log_hazard)
    direction = _draw_direction(rng, cfg.rotated_fraction)

    return SyntheticPatient(
        pid, centre, int(rng.integers(2**31)), brain, scale, site, lobes, lobe_wobble, nodes,
        suv_primary, age, male, smoker, alcohol, performance, m_stage, treatment,
        hpv_probability, hpv, log_hazard, rfs, relapse, direction,
    )  # fmt: skip


# --------------------------------------------------------------------------- rendering


class _Grid:
    """A voxel grid (size x, y, z; spacing mm; origin; direction) that maps physical boxes to slices."""

    def __init__(self, size, spacing, origin, direction) -> None:
        self.size = np.asarray(size, dtype=int)
        self.matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing)
        self.origin = np.asarray(origin, dtype=np.float64)
        self.inverse = np.linalg.inv(self.matrix)

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.size[2]), int(self.size[1]), int(self.size[0])

    def points(self, box: tuple[slice, slice, slice] | None = None):
        """Physical coordinates (x, y, z), each shaped like the (Z, Y, X) sub-array ``box``."""
        box = box or (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        iz = np.arange(box[0].start, box[0].stop, dtype=np.float32)[:, None, None]
        iy = np.arange(box[1].start, box[1].stop, dtype=np.float32)[None, :, None]
        ix = np.arange(box[2].start, box[2].stop, dtype=np.float32)[None, None, :]
        m = self.matrix.astype(np.float32)
        return tuple(
            self.origin[a].astype(np.float32) + m[a, 0] * ix + m[a, 1] * iy + m[a, 2] * iz
            for a in range(3)
        )

    def box(self, centre, radius: float) -> tuple[slice, slice, slice] | None:
        """Index slices covering the physical cube ``centre +- radius``; None if outside the grid."""
        corners = np.array(list(np.ndindex(2, 2, 2))) * 2 - 1
        pts = np.asarray(centre) + corners * radius
        idx = (pts - self.origin) @ self.inverse.T
        lo = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, self.size)
        if np.any(hi <= lo):
            return None
        return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _ellipsoid(x, y, z, centre, radii, rotation=None) -> np.ndarray:
    """Normalised radial distance: < 1 inside the ellipsoid."""
    u = (x - centre[0], y - centre[1], z - centre[2])
    if rotation is not None:
        r = rotation.T
        u = tuple(r[i, 0] * u[0] + r[i, 1] * u[1] + r[i, 2] * u[2] for i in range(3))
    return np.sqrt((u[0] / radii[0]) ** 2 + (u[1] / radii[1]) ** 2 + (u[2] / radii[2]) ** 2)


# Tissue codes and their CT (HU) and SUV values.
AIR, FAT, SOFT, BRAIN, PAROTID, SUBMAND, TONSIL, BONE, SPINE, AIRWAY, PRIMARY, NODE, CYST = range(
    13
)
_HU = np.array([-1000, -95, 42, 32, -25, 38, 48, 850, 420, -990, 58, 50, 20], dtype=np.float32)
_SUV = np.array([0, 0.35, 0.9, 8.5, 2.6, 2.9, 4.2, 0.6, 0.6, 0.05, 0, 0, 0], dtype=np.float32)


def _anatomy(p: SyntheticPatient, grid: _Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue codes (Z, Y, X) plus the primary's and nodes' normalised distance fields."""
    b, s = p.brain, p.scale
    x, y, z = grid.points()
    rx, ry, rz = x - b[0], y - b[1], z - b[2]
    head = _ellipsoid(rx, ry, rz, (0, 5, 0), (74 * s, 92 * s, 82 * s))
    face = _ellipsoid(rx, ry, rz, (0, -18, -58), (56 * s, 58 * s, 42 * s))
    shoulder = np.clip((-rz - 150) / 40, 0, 1) * 2.2 + 1
    neck_r = np.sqrt((rx / (54 * s * shoulder)) ** 2 + ((ry - 10) / (52 * s)) ** 2)
    low = rz < -40
    codes = np.full(grid.shape, AIR, dtype=np.uint8)
    codes[(head < 1) | (face < 1) | ((neck_r < 1) & low)] = FAT
    codes[(head < 0.9) | (face < 0.86) | ((neck_r < 0.85) & low)] = SOFT
    codes[(head < 0.88) & (rz > -20)] = BRAIN
    codes[(head < 0.97) & (head > 0.88) & (rz > -25)] = BONE
    codes[(face < 0.95) & (face > 0.84) & (ry < -10) & (rz < -45)] = BONE
    codes[(np.hypot(rx, ry - 36 * s) < 11 * s) & (rz < -30)] = SPINE
    airway = (np.hypot(rx, ry + 8 * s) < 8 * s) & (rz < -60) & (codes != AIR)
    codes[airway] = AIRWAY
    del head, face, neck_r, shoulder, x, y, z, rx, ry, rz

    def paint(centre, radii, code, rotation=None):
        box = grid.box(b + np.asarray(centre), float(max(radii)) * 1.01)
        if box is not None:
            px, py, pz = grid.points(box)
            d = _ellipsoid(px - b[0], py - b[1], pz - b[2], centre, radii, rotation)
            codes[box][d < 1] = code
        return box

    for side in (1, -1):
        paint((46 * s * side, 12, -52 * s), (11, 17, 20), PAROTID)
        paint((30 * s * side, -26 * s, -96 * s), (10, 10, 9), SUBMAND)
        paint((18 * s * side, 0, -70 * s), (8, 9, 11), TONSIL)

    node_dist = np.full(grid.shape, 9.0, dtype=np.float32)
    for centre, r, cystic in p.nodes:
        box = grid.box(b + centre, r * 1.3)
        if box is None:
            continue
        px, py, pz = grid.points(box)
        d = _ellipsoid(px - b[0], py - b[1], pz - b[2], centre, (r, r * 1.1, r * 1.25))
        sub = codes[box]
        sub[(d < 1) & (sub != NODE) & (sub != CYST)] = CYST if cystic else NODE
        node_dist[box] = np.minimum(node_dist[box], d)

    primary = np.full(grid.shape, 9.0, dtype=np.float32)
    if p.lobes:
        reach = max(float(np.linalg.norm(c - p.lobes[0][0]) + max(r)) for c, r, _ in p.lobes)
        box = grid.box(b + p.lobes[0][0], reach * 1.15)
        if box is not None:
            px, py, pz = grid.points(box)
            qx, qy, qz = px - b[0], py - b[1], pz - b[2]
            w = p.lobe_wobble
            d = np.full(px.shape, 9.0, dtype=np.float32)
            for centre, radii, rot in p.lobes:
                d = np.minimum(d, _ellipsoid(qx, qy, qz, centre, radii, rot))
            d += 0.09 * (np.sin(qx / 6 + w[0]) * np.sin(qy / 7 + w[1]) + np.sin(qz / 5 + w[2]))
            primary[box] = d
            codes[box][d < 1] = PRIMARY
    return codes, primary, node_dist


def render_ct(p: SyntheticPatient, grid: _Grid, rng: np.random.Generator, noise_hu: float):
    """CT in HU (float32) and the label (uint8: 1 GTVp, 2 GTVn) on the same grid."""
    codes, _, _ = _anatomy(p, grid)
    ct = _HU[codes] + rng.normal(0, noise_hu, codes.shape).astype(np.float32)
    label = np.zeros(codes.shape, dtype=np.uint8)
    label[(codes == NODE) | (codes == CYST)] = 2
    label[codes == PRIMARY] = 1
    return np.clip(ct, -1024, 3000), label


def render_suv(p: SyntheticPatient, grid: _Grid) -> np.ndarray:
    """Noise-free SUV on a grid (before PSF, noise and calibration)."""
    codes, primary, node_dist = _anatomy(p, grid)
    suv = _SUV[codes]
    prim = codes == PRIMARY
    if prim.any():
        core = np.clip(primary[prim], 0, 1)
        necrotic = p.suv_primary > 14 and len(p.lobes) > 2
        profile = (0.45 + 0.55 * core) if necrotic else (1.0 - 0.35 * core)
        _, yy, xx = np.nonzero(prim)
        texture = 1 + 0.12 * np.sin(xx / 2.0 + p.lobe_wobble[3]) * np.sin(
            yy / 2.5 + p.lobe_wobble[4]
        )
        suv[prim] = p.suv_primary * profile * texture
    solid, cyst = codes == NODE, codes == CYST
    suv[solid] = 6.5 * (1.0 - 0.3 * node_dist[solid])
    suv[cyst] = 2.0 + 5.0 * np.clip(node_dist[cyst], 0, 1) ** 2  # cold centre, hot rim
    return suv


def _pet_image(p: SyntheticPatient, c: Centre, cfg: SynthConfig, ct_grid, rng) -> sitk.Image:
    """Render PET at twice its resolution, average, blur by the PSF, add noise and calibrate."""
    spacing = np.array(cfg.pet_spacing_mm) * c.pet_spacing
    ct_size, ct_spacing = ct_grid
    extent = np.array(ct_size) * np.array(ct_spacing) * np.array([1.15, 1.15, 1.2])
    size = np.maximum((extent / spacing).astype(int), 8)
    top = p.brain[2] + 110 + rng.uniform(-10, 10)
    centre_xy = p.brain[:2] + rng.uniform(-12, 12, 2)
    origin = (
        np.array([centre_xy[0] - extent[0] / 2, centre_xy[1] - extent[1] / 2, top - extent[2]])
        + spacing / 2
    )
    fine = _Grid(size * 2, spacing / 2, origin - spacing / 4, np.eye(3).ravel())
    suv = render_suv(p, fine)
    suv = suv.reshape(size[2], 2, size[1], 2, size[0], 2).mean(axis=(1, 3, 5))
    sigma_vox = c.psf_fwhm_mm / 2.3548 / spacing[::-1]
    suv = ndimage.gaussian_filter(suv, sigma_vox)
    noisy = suv + rng.normal(0, 1, suv.shape) * c.pet_noise * np.sqrt(np.maximum(suv, 0) + 0.05)
    pet = np.clip(noisy, 0, None).astype(np.float32) * c.calibration
    image = sitk.GetImageFromArray(pet)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    return image


def render_patient(
    p: SyntheticPatient, cfg: SynthConfig
) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """CT (int16 HU), PET (float32 SUV-like) and label (uint8) images of one patient."""
    c = CENTRES[p.centre]
    rng = np.random.default_rng(p.seed)
    spacing = np.array(cfg.ct_spacing_mm) * np.array([c.ct_inplane, c.ct_inplane, 1.0])
    fov = np.array(cfg.fov_mm)
    size = np.maximum((fov / spacing).round().astype(int), 8)
    direction = np.array(p.direction).reshape(3, 3)
    # Place the FOV centre below the brain so that head top and lower neck are both inside.
    fov_centre = p.brain + np.array([rng.uniform(-5, 5), 10 + rng.uniform(-5, 5), 95 - fov[2] / 2])
    origin = fov_centre - direction @ ((size - 1) * spacing / 2)
    ct_array, label_array = render_ct(
        p, _Grid(size, spacing, origin, direction), rng, c.ct_noise_hu
    )

    def to_image(array, pixel):
        image = sitk.Cast(sitk.GetImageFromArray(array), pixel)
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetOrigin(tuple(float(v) for v in origin))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        return image

    ct = to_image(np.round(ct_array), sitk.sitkInt16)
    label = to_image(label_array, sitk.sitkUInt8)
    pet = _pet_image(p, c, cfg, (size, spacing), rng)
    return ct, pet, label


# --------------------------------------------------------------------------- tables and writing


def _missing(rng: np.random.Generator, value, rate: float):
    return None if rng.random() < rate else value


def clinical_rows(patients: list[SyntheticPatient], seed: int) -> pd.DataFrame:
    """Clinical values with realistic missingness (centre-dependent for alcohol)."""
    rng = np.random.default_rng([seed, 10**6])
    rows = []
    for p in patients:
        c = CENTRES[p.centre]
        rows.append(
            {
                "PatientID": p.pid,
                "CenterID": p.centre,
                "Age": _missing(rng, round(p.age), 0.01),
                "Gender": "M" if p.male else "F",
                "Tobacco Consumption": _missing(rng, p.smoker, 0.25),
                "Alcohol Consumption": _missing(rng, p.alcohol, 0.3)
                if c.alcohol_recorded
                else None,
                "Performance Status": _missing(rng, p.performance, 0.15),
                "Treatment": p.treatment,
                "M-stage": _missing(rng, p.m_stage, 0.05),
                "HPV Status": p.hpv,
                "RFS": p.rfs_days,
                "Relapse": p.relapse,
            }
        )
    return pd.DataFrame(rows)


def _write_patient(args: tuple[SyntheticPatient, SynthConfig, Path, tuple[int, ...]]) -> str:
    """Render one patient and write it into each task folder it belongs to.

    The first task folder gets the files; the others get hard links to them (same bytes, as in the
    real release, without the disk cost), or copies where links are not possible.
    """
    p, cfg, root, tasks = args
    ct, pet, label = render_patient(p, cfg)
    first = case_paths(root, tasks[0], p.pid)
    io.write_image(first.ct, ct)
    io.write_image(first.pet, pet)
    if first.label is not None:
        io.write_image(first.label, label)
    for task in tasks[1:]:
        case = case_paths(root, task, p.pid)
        case.ct.parent.mkdir(parents=True, exist_ok=True)
        for src, dst in ((first.ct, case.ct), (first.pet, case.pet)):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    return p.pid


ORACLE_COLUMNS = ("PatientID", "CenterID", "log_hazard", "hpv_probability", "site", "nodes",
                  "in_task2", "in_task3")  # fmt: skip


def _claim_oracle(oracle: Path, out: Path) -> None:
    """Refuse an oracle path inside the release, or an existing file that is not an oracle."""
    io.check_output_file(oracle, [out])
    if oracle.is_file():
        with oracle.open() as handle:
            header = handle.readline().strip()
        if header != ",".join(ORACLE_COLUMNS):
            raise io.OutputError(
                f"{oracle}: exists and is not an oracle written by `hecktor synth`; "
                "choose another --oracle path"
            )


def _task_members(cfg: SynthConfig, ids: list[str]) -> tuple[set[str], set[str]]:
    """The patients of Task 2 and Task 3 (every patient is in Task 1)."""
    rng = np.random.default_rng([cfg.seed, 10**7])
    task2 = set(rng.choice(ids, size=max(2, round(cfg.task2_fraction * len(ids))), replace=False))
    task3 = set(rng.choice(ids, size=max(2, round(cfg.task3_fraction * len(ids))), replace=False))
    return task2, task3


def _write_images(
    jobs: list[tuple[SyntheticPatient, SynthConfig, Path, tuple[int, ...]]], workers: int
) -> None:
    """Render and write every patient, in ``workers`` processes where more than one."""
    bar = tqdm(total=len(jobs), desc="synth", unit="patient")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_patient, jobs):
                bar.update()
    else:
        for job in jobs:
            _write_patient(job)
            bar.update()
    bar.close()


def _write_tables(root: Path, table: pd.DataFrame, members: dict[int, set[str]]) -> None:
    """Each task's CSV: its patients and the columns the real release gives that task."""
    columns = {
        1: ["PatientID", "CenterID"],
        2: ["PatientID", "CenterID", "Age", "Gender", "Tobacco Consumption",
            "Alcohol Consumption", "Performance Status", "Treatment", "M-stage", "RFS",
            "Relapse"],
        3: ["PatientID", "CenterID", "HPV Status", "Age", "Gender", "Tobacco Consumption",
            "Alcohol Consumption", "Performance Status", "M-stage"],
    }  # fmt: skip
    for task, cols in columns.items():
        rows = table[table["PatientID"].isin(members[task])][cols]
        io.write_text(root / TASK_DIR[task] / TASK_CSV[task], rows.to_csv(index=False))


def _oracle(patients: list[SyntheticPatient], task2: set[str], task3: set[str]) -> pd.DataFrame:
    """The hidden truth (log-hazard, HPV probability, anatomy) that no training stage reads."""
    return pd.DataFrame(
        {
            "PatientID": [p.pid for p in patients],
            "CenterID": [p.centre for p in patients],
            "log_hazard": [p.log_hazard for p in patients],
            "hpv_probability": [p.hpv_probability for p in patients],
            "site": [p.site or "none" for p in patients],
            "nodes": [len(p.nodes) for p in patients],
            "in_task2": [p.pid in task2 for p in patients],
            "in_task3": [p.pid in task3 for p in patients],
        }
    )


def synthesize(cfg: SynthConfig, out: Path | str, oracle: Path | str | None = None) -> pd.DataFrame:
    """Write a synthetic release to ``out`` (atomically) and the oracle CSV; return the oracle.

    ``out`` must be new, empty or an earlier synthetic release, and ``oracle`` new or an earlier
    oracle: anything else is refused before any work.
    """
    unknown = [c for c in cfg.centres if c not in CENTRES]
    if unknown:
        raise UserError(f"synth.centres: unknown centre(s) {unknown}; known: {sorted(CENTRES)}")
    io.claim_dir(out, "synth")
    if oracle is not None:
        _claim_oracle(Path(oracle), Path(out))
    patients = [draw_patient(i, cfg) for i in range(cfg.patients)]
    ids = [p.pid for p in patients]
    task2, task3 = _task_members(cfg, ids)
    table = clinical_rows(patients, cfg.seed)
    out = Path(out)
    with io.atomic_dir(out, "synth") as tmp:
        jobs = [
            (p, cfg, tmp, tuple(t for t, s in ((1, ids), (2, task2), (3, task3)) if p.pid in s))
            for p in patients
        ]
        _write_images(jobs, cfg.workers)
        _write_tables(tmp, table, {1: set(ids), 2: task2, 3: task3})
    truth = _oracle(patients, task2, task3)
    if oracle is not None:
        io.write_text(oracle, truth.to_csv(index=False))
    log.info("synthetic release of %d patients written to %s", len(ids), out)
    return truth
