"""Threshold presets for CT, in Hounsfield units.

Values follow common practice in medical 3D printing and the tissue ranges of the Hounsfield
scale (air -1000, fat about -100, water 0, soft tissue +20 to +80, cancellous bone from about
+300, cortical bone +1000 and more, tooth enamel above +2000): Mimics' "Bone (CT)" preset starts
at 226 HU and most printing guides use 200-400 HU for bone; skin is the air/tissue boundary,
taken half-way between fat and air; "teeth" sits above bone marrow and most cortex; lung and
airway keep the air below -400 HU that lies inside the body (see ``invert``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A threshold: voxels with HU >= level are inside (or HU < level when ``invert``)."""

    name: str
    level: float
    description: str
    invert: bool = False


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("bone", 300.0, "bone (cancellous and cortical), HU >= 300"),
    Preset("skin", -300.0, "skin surface, the air/tissue boundary, HU >= -300"),
    Preset("soft-tissue", 20.0, "muscle and organs without fat, HU >= 20"),
    Preset("teeth", 1200.0, "teeth (enamel and dentine) and dense cortical bone, HU >= 1200"),
    Preset("lung", -400.0, "lung and airway: air inside the body, HU < -400", invert=True),
)}
