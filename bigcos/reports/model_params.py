"""What each model is: its fit parameters as columns, its D-family, and a sentence for the legend.

Parameters come from the model's ``manifest.json`` (``bigcos fit`` / ``bigcos fit-als``); a
model directory written by other software has none, and its name is read instead
(``obj1-<D>[-project-back][-std|-pop<beta>]``, ``obj2``, ``als``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

_SCALINGS = {
    "symmetric": "D = I: users and items share g^½ (the paper's symmetric choice, Eq. 5 form)",
    "item-orthonormal": "D = g^½: item embeddings B = V_k, orthonormal (paper §2.2)",
    "user-orthonormal": "D = g^-½: A = V_k, user embeddings X V_k (paper §2.2)",
    "sigma": "D = Σ^-½: singular values split as objective 2 does",
}
_NAME = re.compile(r"^obj(?P<objective>[12])(?:-(?P<rest>.*?))?"
                   r"(?P<suffix>-std|-pop[0-9.]+|-rows[0-9.]+)?(?P<lamcos>-lamcos)?$")
NAMED_D = ("symmetric", "item-orthonormal", "user-orthonormal", "sigma")


class DFamily(NamedTuple):
    """Models of objective 1 that differ only in the rescaling D (same lam, k and remedy)."""

    objective: int
    k: int | None
    lam: float | None
    remedy: str
    remedy_beta: float | None

    @property
    def label(self) -> str:
        """Human-readable, e.g. ``objective 1, λ=20, k=8, remedy standardize``."""
        parts = [f"objective {self.objective}"]
        if self.lam is not None:
            parts.append(f"λ={self.lam:g}")
        if self.k is not None:
            parts.append(f"k={self.k}")
        if self.remedy != "none":
            beta = f" β={self.remedy_beta:g}" if self.remedy_beta is not None else ""
            parts.append(f"remedy {self.remedy}{beta}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ModelParams:
    """One model's parameters as the report's ``models`` table holds them (None: unknown)."""

    model: str
    directory: str | None
    model_type: str           # closed-form, als, cosine-trained or external
    objective: int | None
    k: int | None             # SVD rank (closed form) or factors (ALS)
    dims: int                 # embedding dimensions kept
    lam: float | None
    scaling: str | None       # D of objective 1 (Scaling.label), None otherwise
    project_back: bool
    remedy: str               # none, standardize, popularity or rows
    remedy_beta: float | None  # beta of popularity, gamma of rows
    lam_source: str | None    # validated, fixed, or None (unknown)
    description: str

    @property
    def family(self) -> DFamily | None:
        """The D-family (objective 1 factor models with a named D), else None."""
        if self.objective != 1 or self.scaling is None or self.project_back:
            return None
        return DFamily(1, self.k, self.lam, self.remedy, self.remedy_beta)


def scaling_label(scaling: dict[str, Any]) -> str:
    """The name part of a D (``symmetric``, ``random100x-seed1``, ...) from its manifest dict."""
    from bigcos.models import Scaling

    try:
        return Scaling(**scaling).label
    except TypeError:
        return str(scaling.get("kind"))


def describe_scaling(label: str) -> str:
    """A sentence on what D ``label`` is."""
    if label in _SCALINGS:
        return _SCALINGS[label]
    random = re.fullmatch(r"random([0-9.e+]+)x-seed(\d+)", label)
    if random:
        spread, seed = random.groups()
        return (f"D random: d_i = {spread}^u_i, u_i uniform in (-½, ½), seed {seed} "
                f"(largest/smallest ≤ {spread}×)")
    if label.startswith("vector-"):
        return f"D given per dimension (values hashed {label[7:]})"
    return f"D = {label}"


def _describe(p: dict[str, Any]) -> str:
    if p["model_type"] in ("als", "cosine-trained"):
        return p["description"]
    if p["model_type"] == "external" and p["objective"] is None:
        return "embeddings written by other software (no fit parameters)"
    lam = f", λ={p['lam']:g}" if p["lam"] is not None else ""
    if p.get("lam_source") == "validated":
        lam += " (chosen on validation users)"
    k = f", SVD rank k={p['k']}" if p["k"] is not None else ""
    eq = {1: "Eq. 1", 2: "Eq. 2"}[p["objective"]]
    text = f"objective {p['objective']} (paper {eq}){lam}{k}"
    if p["project_back"]:
        text += ": project-back remedy (paper §3), embeddings of A Bᵀ, the same for every D"
    elif p["objective"] == 2:
        text += f": unique solution, {p['dims']} dimensions kept"
    elif p["scaling"] is not None:
        text += f"; {describe_scaling(p['scaling'])}"
    if p["remedy"] == "standardize":
        text += "; columns standardised (centred, unit variance) before the SVD (-std)"
    elif p["remedy"] == "popularity":
        text += (f"; columns scaled by popularity^-{p['remedy_beta']:g} before the SVD "
                 f"(-pop{p['remedy_beta']:g})")
    elif p["remedy"] == "rows":
        text += (f"; rows scaled by activity^-{p['remedy_beta']:g} before the SVD "
                 f"(-rows{p['remedy_beta']:g})")
    return text


def _from_name(name: str) -> dict[str, Any]:
    """Parameters read off a model name (no manifest parameters)."""
    out: dict[str, Any] = {"objective": None, "scaling": None, "project_back": False,
                           "remedy": "none", "remedy_beta": None}
    match = _NAME.match(name)
    if not match:
        return out
    out["objective"] = int(match["objective"])
    rest = match["rest"] or ""
    out["project_back"] = rest == "project-back"
    if out["objective"] == 1 and rest and not out["project_back"]:
        out["scaling"] = rest
    suffix = match["suffix"] or ""
    if suffix == "-std":
        out["remedy"] = "standardize"
    elif suffix.startswith("-pop"):
        out["remedy"], out["remedy_beta"] = "popularity", float(suffix[4:])
    elif suffix.startswith("-rows"):
        out["remedy"], out["remedy_beta"] = "rows", float(suffix[5:])
    return out


def model_params(name: str, manifest: dict[str, Any], dims: int,
                 directory: str | Path | None = None) -> ModelParams:
    """Parameters of one model from its manifest (or its name when the manifest has none).

    Parameters
    ----------
    name : str
        The model's name (manifest ``model_name``, the neighbour partition ``model=``).
    manifest : dict
        The model directory's ``manifest.json``.
    dims : int
        Embedding dimensions (the width of the stored embeddings).
    directory : str or Path, optional
        The model directory.

    Returns
    -------
    ModelParams
    """
    params = manifest.get("parameters", {})
    p: dict[str, Any] = {"dims": int(manifest.get("counts", {}).get("dims_kept", dims)),
                         "k": None, "lam": None, "lam_source": None}
    if params.get("model") == "cosine":
        p.update(model_type="cosine-trained", objective=None, k=params.get("k"), scaling=None,
                 project_back=False, remedy="none", remedy_beta=None, lam_source="fixed",
                 description=(f"trained with respect to cosine (paper §3's first remedy): "
                              f"loss ‖X − τ N(XA) N(B)ᵀ‖², {params.get('k')} dimensions (the "
                              f"rank is its regulariser), early stopping on validation users"))
    elif params.get("model") == "als":
        reg = params.get("regularization")
        p.update(model_type="als", objective=None, k=params.get("factors"), scaling=None,
                 project_back=False, remedy="none", remedy_beta=None,
                 lam=None if reg is None else float(reg),
                 lam_source=params.get("lam_source", "fixed"),
                 description=(f"implicit ALS (Hu, Koren & Volinsky 2008, the implicit library): "
                              f"{params.get('factors')} factors, regularisation "
                              f"{params.get('regularization')}, alpha {params.get('alpha')}, "
                              f"{params.get('iterations')} iterations"))
    elif "objective" in params:
        pre = params.get("preprocessing") or {}
        scaling = params.get("scaling")
        p.update(model_type="closed-form", objective=int(params["objective"]),
                 k=(params.get("svd") or {}).get("k"), lam=float(params.get("lam", 0.0)),
                 lam_source=params.get("lam_source", "fixed"),
                 scaling=scaling_label(scaling) if scaling else None,
                 project_back=bool(params.get("project_back", False)),
                 remedy=pre.get("kind", "none"),
                 remedy_beta={"popularity": pre.get("beta"),
                              "rows": pre.get("gamma")}.get(pre.get("kind")))
    else:
        p.update(model_type="als" if name == "als" else "external", **_from_name(name))
        if name == "als":
            p["description"] = "implicit ALS (no fit parameters recorded)"
    if p["objective"] == 1 and p["scaling"] is None and not p["project_back"] \
            and p["model_type"] == "closed-form":
        p["scaling"] = "symmetric"
    p.setdefault("description", "")
    p["description"] = p["description"] or _describe(p)
    return ModelParams(model=name, directory=str(directory) if directory else None,
                       model_type=p["model_type"], objective=p["objective"],
                       k=None if p["k"] is None else int(p["k"]), dims=p["dims"],
                       lam=p["lam"], scaling=p["scaling"], project_back=p["project_back"],
                       remedy=p["remedy"], remedy_beta=p["remedy_beta"],
                       lam_source=p["lam_source"], description=p["description"])


def d_family(manifest: dict[str, Any], name: str) -> DFamily | None:
    """The D-family of a model from its manifest (or name), or None when it is in none.

    Objective 1 factor models with the same lam, SVD rank k and column remedy form one family:
    they fit the data equally well and differ only in the rescaling D.
    """
    return model_params(name, manifest, 0).family
