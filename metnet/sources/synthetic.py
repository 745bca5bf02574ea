"""Synthetic radar and satellite sequences on the canonical grid, for demos and tests.

Every frame is a function of ``(grid, time, seed)`` alone, computed directly from the
time (no time stepping), so any frame of any range is reproducible on its own.

The weather is one latent standard-normal field ``z(x, t)``:

- **Spatial structure.** ``z`` is Gaussian noise filtered in Fourier space to a power
  spectrum ``P(k) ~ (k^2 + k0^2)^(-3/2)``: the ``k^-3`` power law typical of radar rain
  fields (pysteps' parametric spectrum fit returns about -3 on this field) below the
  200 km outer scale ``1/k0``, flat above it. The FFT domain is periodic, the grid's extent or at
  least 512 km (the grid is its top-left corner).
- **Growth and decay.** The spectrum is split into three wavelength bands (>= 64 km,
  16-64 km, < 16 km) with lifetimes of 4 h, 80 min and 30 min (small features live
  shorter, the premise of pysteps' S-PROG). Each band holds independent white-noise keys at
  multiples of its lifetime and mixes the two keys around ``t`` with weights
  ``cos, sin`` of ``pi/2`` times the fraction of the lifetime elapsed: every frame keeps
  exactly the target spectrum while cells grow and decay smoothly.
- **Advection.** The whole field moves with a spatially uniform wind of 8-15 m/s from a
  seed-chosen direction plus a +/-5 m/s oscillation with an 18 h period; the
  displacement, the wind's exact time integral, is applied as a Fourier phase shift.
- **Rain.** It rains where ``z`` exceeds its ``1 - f`` quantile; the rain cover ``f``
  drifts between 10 % and 30 % with a 30 h period (:func:`rain_fraction`). The rate is
  lognormal: median 1.2 mm/h, log-standard deviation 1.1 (99th percentile about
  15 mm/h, rare cores near 100 mm/h), a monotone map of ``z`` so the heaviest rain sits
  in the cells' cores; 0 mm/h elsewhere.
- **Satellite.** A cloud cover ``c = Phi((z - z_cloud) / 0.35)`` (``f`` + 25 % cloudy) and a
  cloud top that is colder where ``z`` is higher (about 222 K at the rain edge, 200 K in heavy
  cores) give IR brightness temperatures ``T = T_clear + c (T_top - T_clear)`` with a
  clear-sky value per band (e.g. 293 K at 10.3 um, 235 K in the 6.2 um water-vapour
  band), and visible/near-IR reflectance factors that rise from the surface value to a
  thickness-dependent cloud value. No diurnal cycle: the visible bands are always lit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import fft
from scipy.special import ndtr, ndtri

from metnet.grid import Grid
from metnet.sources import SourceError
from metnet.sources.goes import ABI_BANDS, WAVELENGTH_UM, band_variable

#: Variables the generator can produce.
VARIABLES: tuple[str, ...] = ("precipitation_rate",) + tuple(band_variable(b) for b in ABI_BANDS)

SPECTRAL_EXPONENT = -3.0
"""Slope of the power spectrum below the outer scale (log power per log wavenumber)."""
OUTER_SCALE_M = 200_000.0
"""Wavelength above which the spectrum flattens, metres."""
MIN_DOMAIN_M = 512_000.0
"""Smallest side of the periodic FFT domain, metres (small grids are its corner)."""
#: (shortest wavelength in metres, lifetime in seconds) per band, largest scales first.
LIFETIMES: tuple[tuple[float, float], ...] = (
    (64_000.0, 4 * 3600.0),
    (16_000.0, 80 * 60.0),
    (0.0, 30 * 60.0),
)
RAIN_FRACTION_RANGE = (0.1, 0.3)
"""Range of the fraction of the area with rain (rate > 0), which drifts over time."""
RAIN_FRACTION_PERIOD_S = 30 * 3600.0
"""Period of the rain-cover drift, seconds."""
RATE_MEDIAN_MM_H = 1.2
"""Median rain rate where it rains, mm/h."""
RATE_LOG_STD = 1.1
"""Standard deviation of the natural log of the rain rate where it rains."""
CLOUD_EXCESS = 0.25
"""Fraction of the area under cloud (cover > 0.5) without rain."""
WIND_SPEED_RANGE_M_S = (8.0, 15.0)
"""Range of the mean wind speed, m/s (drawn per seed, as is its direction)."""
WIND_OSCILLATION_M_S = 5.0
"""Amplitude of the oscillation of each wind component around the mean, m/s."""
WIND_PERIOD_S = 18 * 3600.0
"""Period of the wind oscillation, seconds."""

#: Clear-sky brightness temperature (K) of the emissive bands 7-16.
_CLEAR_SKY_K = {7: 295.0, 8: 235.0, 9: 245.0, 10: 255.0, 11: 286.0, 12: 262.0, 13: 293.0,
                14: 292.0, 15: 289.0, 16: 268.0}  # fmt: skip
#: (surface, thickest cloud) reflectance factor of the reflective bands 1-6.
_REFLECTANCE = {1: (0.08, 0.9), 2: (0.06, 0.9), 3: (0.25, 0.85), 4: (0.01, 0.35),
                5: (0.15, 0.45), 6: (0.08, 0.3)}  # fmt: skip

_DEFAULT_STEP_MINUTES = 2
_LOCATION = re.compile(r"synthetic://(?:seed=(?P<seed>\d+))?/?")
_PATH = re.compile(r"synthetic://seed=(?P<seed>\d+)/(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


# ----------------------------------------------------------------------------- the latent field


@dataclass(frozen=True)
class _SeedParameters:
    """The slowly varying, seed-dependent parameters of the weather."""

    mean_wind: np.ndarray  # (2,) m/s east, north
    wind_phase: np.ndarray  # (2,) radians, of each component's oscillation
    cover_phase: float  # radians, of the rain-cover drift


@functools.lru_cache(maxsize=64)
def _parameters(seed: int) -> _SeedParameters:
    rng = np.random.default_rng([seed, 0x57454154])  # "WEAT": a stream apart from the noise keys
    speed, direction = rng.uniform(*WIND_SPEED_RANGE_M_S), rng.uniform(0.0, 2 * np.pi)
    mean_wind = speed * np.array([np.cos(direction), np.sin(direction)])  # (2,)
    return _SeedParameters(mean_wind, rng.uniform(0.0, 2 * np.pi, 2), rng.uniform(0.0, 2 * np.pi))


def wind(time: np.datetime64, seed: int = 0) -> np.ndarray:
    """The advecting wind at ``time``: ``(u, v)`` in m/s, east and north."""
    p = _parameters(seed)
    angle = 2 * np.pi * _seconds(time) / WIND_PERIOD_S + p.wind_phase  # (2,)
    return p.mean_wind + WIND_OSCILLATION_M_S * np.sin(angle)  # (2,)


def displacement(time: np.datetime64, seed: int = 0) -> np.ndarray:
    """Integral of :func:`wind` from the epoch to ``time``: ``(dx, dy)`` metres east, north."""
    p = _parameters(seed)
    t = _seconds(time)
    omega = 2 * np.pi / WIND_PERIOD_S
    swing = np.cos(p.wind_phase) - np.cos(omega * t + p.wind_phase)  # (2,)
    return p.mean_wind * t + WIND_OSCILLATION_M_S / omega * swing  # (2,)


def rain_fraction(time: np.datetime64, seed: int = 0) -> float:
    """Expected fraction of the area with rain at ``time`` (within :data:`RAIN_FRACTION_RANGE`)."""
    low, high = RAIN_FRACTION_RANGE
    angle = 2 * np.pi * _seconds(time) / RAIN_FRACTION_PERIOD_S + _parameters(seed).cover_phase
    return low + (high - low) * 0.5 * (1.0 + np.sin(angle))


def _seconds(time: np.datetime64) -> float:
    return float(np.datetime64(time, "ns").astype(np.int64)) / 1e9


@functools.lru_cache(maxsize=8)
def _spectral_layout(shape: tuple[int, int], resolution_m: float):
    """FFT domain, amplitude and band membership for a grid of ``shape`` and spacing."""
    min_cells = int(np.ceil(MIN_DOMAIN_M / resolution_m))
    domain = tuple(fft.next_fast_len(max(n, min_cells), real=True) for n in shape)
    ky = fft.fftfreq(domain[0], d=resolution_m)  # (Ny,) cycles per metre
    kx = fft.rfftfreq(domain[1], d=resolution_m)  # (Nx // 2 + 1,)
    k = np.hypot(ky[:, None], kx[None, :])  # (Ny, Nx // 2 + 1)
    amplitude = (k**2 + OUTER_SCALE_M**-2) ** (SPECTRAL_EXPONENT / 4)  # sqrt of the power
    amplitude[0, 0] = 0.0  # zero mean
    wavelength = np.divide(1.0, k, out=np.full_like(k, np.inf), where=k > 0)
    bands, upper = [], np.inf
    for shortest, _ in LIFETIMES:
        member = (wavelength >= shortest) & (wavelength < upper)
        bands.append((np.flatnonzero(member), amplitude.ravel()[member.ravel()]))
        upper = shortest
    return domain, ky * resolution_m, kx * resolution_m, bands  # frequencies in cycles per cell


# Two keys per band: exactly what a run of consecutive frames reuses.
@functools.lru_cache(maxsize=2 * len(LIFETIMES))
def _key(seed: int, band: int, index: int, layout: tuple) -> np.ndarray:
    """The Fourier coefficients of band ``band`` at key time ``index``: white complex noise
    (E|w|^2 = 1) times the spectral amplitude, ``(n_band,)`` complex64."""
    amplitude = _spectral_layout(*layout)[3][band][1]  # (n_band,)
    rng = np.random.default_rng([seed, band, index % 2**64])
    w = rng.standard_normal((2, amplitude.size), dtype=np.float32)  # real, imaginary parts
    return (w[0] + 1j * w[1]) * (amplitude * np.sqrt(0.5)).astype(np.float32)


def latent_field(grid: Grid, time: np.datetime64, seed: int = 0) -> np.ndarray:
    """The standard-normal latent field at ``time``: ``(ny, nx)`` float32 (module docstring)."""
    layout = (grid.shape, grid.resolution)
    domain, fy, fx, bands = _spectral_layout(*layout)
    t = _seconds(time)
    # complex64 / float32 throughout: half the memory traffic, ample precision for z.
    spectrum = np.zeros((domain[0], domain[1] // 2 + 1), dtype=np.complex64)  # (Ny, Nx//2+1)
    flat = spectrum.reshape(-1)
    for b, ((indices, _), (_, lifetime)) in enumerate(zip(bands, LIFETIMES)):
        index, fraction = divmod(t / lifetime, 1.0)
        key0 = _key(seed, b, int(index), layout)
        key1 = _key(seed, b, int(index) + 1, layout)
        angle = 0.5 * np.pi * fraction
        flat[indices] = np.float32(np.cos(angle)) * key0 + np.float32(np.sin(angle)) * key1
    # Advection: shift by the displacement in cells (rows run north -> south).
    dx, dy = displacement(time, seed) / grid.resolution
    spectrum *= np.exp(-2j * np.pi * fy * (-dy % domain[0])).astype(np.complex64)[:, None]
    spectrum *= np.exp(-2j * np.pi * fx * (dx % domain[1])).astype(np.complex64)[None, :]
    z = fft.irfft2(spectrum, s=domain)  # (Ny, Nx) float32
    z /= z.std()
    return z[: grid.shape[0], : grid.shape[1]]  # (ny, nx)


# ----------------------------------------------------------------------------- observables


def _rain_rate(z: np.ndarray, z_rain: float) -> np.ndarray:
    """Rain rate (mm/h) from the latent field: lognormal above ``z_rain``, else 0."""
    rate = np.zeros(z.shape, dtype=np.float32)
    wet = z > z_rain
    below = ndtr(z_rain)
    # float64: near the threshold a float32 CDF could round below ``below`` (-> NaN).
    quantile = (ndtr(z[wet].astype(np.float64)) - below) / (1.0 - below)  # rank in (0, 1)
    rate[wet] = RATE_MEDIAN_MM_H * np.exp(RATE_LOG_STD * ndtri(quantile))
    return rate


def _satellite(z: np.ndarray, z_rain: float, z_cloud: float, bands: Sequence[int]):
    """Reflectance factor (bands 1-6) or brightness temperature (K, 7-16) per band:
    ``{band: (ny, nx) float32}``."""
    cover = ndtr((z - np.float32(z_cloud)) / np.float32(0.35))  # cloud cover in [0, 1]
    depth = ndtr((z - np.float32(z_rain)) / np.float32(0.8))  # 0 thin cloud, 1 deep convection
    cloud_top = 245.0 - 45.0 * depth  # K
    out = {}
    for band in bands:
        if band in _CLEAR_SKY_K:
            clear = _CLEAR_SKY_K[band]
            out[band] = clear + cover * (cloud_top - clear)
        else:
            surface, thick = _REFLECTANCE[band]
            cloud = surface + (thick - surface) * (0.4 + 0.6 * depth)
            out[band] = surface + cover * (cloud - surface)
    return out


def _check_variables(variables: Iterable[str]) -> tuple[str, ...]:
    names = tuple(variables)
    unknown = [v for v in names if v not in VARIABLES]
    if unknown or not names:
        raise ValueError(
            f"unknown synthetic variables {unknown or '(none given)'}; valid variables: "
            f"{', '.join(VARIABLES)}"
        )
    return names


def synthetic_dataset(
    grid: Grid,
    times: Iterable[np.datetime64] | np.ndarray,
    seed: int = 0,
    variables: Iterable[str] = VARIABLES,
) -> xr.Dataset:
    """Synthetic observations on ``grid`` at ``times``: float32 ``(time, y, x)`` variables.

    ``precipitation_rate`` in mm/h, ``abi_c01`` .. ``abi_c06`` reflectance factor (``1``),
    ``abi_c07`` .. ``abi_c16`` brightness temperature (K). Deterministic in
    ``(grid, time, seed)``; each time is computed independently.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    names = _check_variables(variables)
    times = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    bands = [b for b in ABI_BANDS if band_variable(b) in names]
    frames: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for time in times:
        z = latent_field(grid, time, int(seed))  # (ny, nx)
        wet = rain_fraction(time, int(seed))
        z_rain, z_cloud = float(ndtri(1.0 - wet)), float(ndtri(1.0 - wet - CLOUD_EXCESS))
        if "precipitation_rate" in frames:
            frames["precipitation_rate"].append(_rain_rate(z, z_rain))
        for band, values in _satellite(z, z_rain, z_cloud, bands).items():
            frames[band_variable(band)].append(values)
    variables_out = {}
    for name in names:
        if name == "precipitation_rate":
            attrs = {"units": "mm/h", "long_name": "synthetic surface precipitation rate"}
        else:
            band = int(name[-2:])
            kind = "reflectance factor" if band <= 6 else "brightness temperature"
            attrs = {
                "units": "1" if band <= 6 else "K",
                "long_name": f"synthetic GOES ABI band {band} ({WAVELENGTH_UM[band]:g} um) {kind}",
            }
        stacked = np.stack(frames[name]) if len(times) else np.empty((0, *grid.shape), np.float32)
        variables_out[name] = (("time", "y", "x"), stacked, attrs)  # (T, ny, nx)
    ds = grid.dataset(variables_out, time=times)
    ds.attrs["source"] = f"metnet synthetic weather, seed {int(seed)}"
    return ds


# ----------------------------------------------------------------------------- the source


class SyntheticSource:
    """Synthetic observations as a :class:`~metnet.sources.Source`.

    Locations are ``synthetic://seed=N`` (``synthetic://`` uses the ``seed`` option);
    :meth:`discover` returns one pseudo-path per ``step_minutes`` slot (multiples of the
    step since the epoch), e.g. ``synthetic://seed=0/2019-06-10T00:02:00``. ``variables``
    chooses what :meth:`read` returns (default all of :data:`VARIABLES`).
    """

    name = "synthetic"

    def __init__(
        self,
        seed: int = 0,
        variables: Iterable[str] = VARIABLES,
        step_minutes: int = _DEFAULT_STEP_MINUTES,
    ):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if step_minutes <= 0:
            raise ValueError(f"step_minutes must be positive, got {step_minutes}")
        self.seed = int(seed)
        self.variables = _check_variables(variables)
        self.step = np.timedelta64(int(step_minutes), "m")

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed}, variables={len(self.variables)})"

    def _seed_of(self, location: str) -> int:
        match = _LOCATION.fullmatch(str(location))
        if match is None:
            raise SourceError(
                f"{location}: not a synthetic location; expected 'synthetic://seed=N' "
                "or 'synthetic://'"
            )
        return self.seed if match["seed"] is None else int(match["seed"])

    def _parse(self, path: str) -> tuple[int, np.datetime64]:
        match = _PATH.fullmatch(str(path))
        if match is None:
            raise SourceError(
                f"{path}: not a synthetic pseudo-path; expected "
                "'synthetic://seed=N/YYYY-MM-DDTHH:MM:SS'"
            )
        try:
            return int(match["seed"]), np.datetime64(match["time"], "ns")
        except ValueError:
            raise SourceError(f"{path}: invalid time {match['time']!r}") from None

    def discover(
        self, location: str, start: np.datetime64 | None, end: np.datetime64 | None
    ) -> list[str]:
        """One pseudo-path per slot in ``[start, end]`` (both required: the series is endless)."""
        seed = self._seed_of(location)
        if start is None or end is None:
            raise SourceError(f"{location}: synthetic data is endless; give both start and end")
        step = self.step.astype("timedelta64[ns]").astype(np.int64)
        first = -(-np.datetime64(start, "ns").astype(np.int64) // step)  # ceil: first slot >= start
        last = np.datetime64(end, "ns").astype(np.int64) // step
        slots = (np.arange(first, last + 1) * step).astype("datetime64[ns]")
        return [f"synthetic://seed={seed}/{t}" for t in np.datetime_as_string(slots, unit="s")]

    def time_of(self, path: str) -> np.datetime64:
        """The time in a pseudo-path."""
        return self._parse(path)[1]

    def read(self, path: str, grid: Grid) -> xr.Dataset:
        """The frame named by ``path`` on ``grid`` (see :func:`synthetic_dataset`)."""
        seed, time = self._parse(path)
        return synthetic_dataset(grid, [time], seed=seed, variables=self.variables)
