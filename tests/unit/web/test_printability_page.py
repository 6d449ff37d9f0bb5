"""The job page's printability section (web/templates/printability.html)."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parents[3] / "web" / "templates"
REPORT = {
    "walls": {"min_mm": 0.677, "p1_mm": 1.05, "threshold_mm": 0.8, "thin_area_mm2": 2922.4,
              "method": "…"},
    "shells": 3, "voids": {"count": 2, "total_mm3": 8253.6, "largest_mm3": [8207.0, 46.6]},
    "beds": [{"bed_mm": [180.0, 180.0, 180.0], "fit": "scale needed", "scale": 0.963},
             {"bed_mm": [250.0, 210.0, 210.0], "fit": "fits", "scale": None}],
    "material": {"volume_cm3": 269.8, "grams": {"pla": 334.5, "resin": 296.8}},
    "solid_or_hollow": {"filled_mm3": 0.0, "cavity_mm3": 86_000.0, "holes_mm3": 20.0,
                        "drain_holes_lps_mm": [[1, 2, 3], [4, 5, 6]]},
    "grid_mm": [1.0, 0.45, 0.45], "notes": ["the voxels are coarse"],
}


def render(report: dict) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    return env.get_template("printability.html").render(job={"report": report})


def test_the_section_shows_walls_shells_beds_and_material():
    html = " ".join(render({"printability": REPORT}).split())
    for text in ("0.68 mm (1st percentile 1.05 mm)", "2,922 mm² of surface",
                 "<th>Shells</th><td>3</td>", "8,253.6 mm³ in all",
                 "Bed 180 × 180 × 180 mm</th><td>scale needed (to 96%)",
                 "Bed 250 × 210 × 210 mm</th><td>fits", "269.8 cm³: pla 334 g, resin 297 g",
                 "hollowed: 86.0 cm³ removed, 2 drain hole(s)", "the voxels are coarse"):
        assert text in html, text


def test_reports_from_before_the_section_render_nothing():
    assert render({"mesh": {}}).strip() == ""
    strict = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined)
    assert "Printability" in strict.get_template("printability.html").render(
        job={"report": {"printability": {**REPORT, "solid_or_hollow": None}}})
