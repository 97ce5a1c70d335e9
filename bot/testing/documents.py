"""Real document files for tests, written from known text: PDFs (multi-page, encrypted, image-only), DOCX,
and a plain domain folder to drop them into. Needs the `dev` extra (fpdf2, python-docx, pypdf, Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

DOMAIN_TOML = """name = "{name}"
description = "Test domain for documents."
examples = ["a?", "b?", "c?"]
system_prompt = "Answer from the sources."
{extra}"""


def make_domain(root: Path, name: str = "docs", extra: str = "") -> Path:
    """An empty plugin folder `root/<name>` with a valid domain.toml; returns its docs/ folder."""
    folder = root / name
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    (folder / "domain.toml").write_text(DOMAIN_TOML.format(name=name, extra=extra))
    return folder / "docs"


def make_pdf(path: Path, pages: Sequence[str]) -> Path:
    """A PDF with one page per string, each page holding exactly that text (a text layer, as a word processor
    writes it)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def make_encrypted_pdf(path: Path, pages: Sequence[str], password: str = "secret") -> Path:
    """A PDF that opens only with a password (RC4-128: pypdf writes it without the cryptography package)."""
    from pypdf import PdfWriter

    plain = make_pdf(path.with_suffix(".plain.pdf"), pages)
    writer = PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    writer.write(str(path))
    plain.unlink()
    return path


def make_scanned_pdf(path: Path, n_pages: int = 2) -> Path:
    """Pages that are pictures only, as a scanner writes them: no text layer."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    image = path.with_suffix(".png")
    picture = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(picture).text((10, 50), "This text is pixels, not a text layer", fill="black")
    picture.save(image)
    pdf = FPDF()
    for _ in range(n_pages):
        pdf.add_page()
        pdf.image(str(image), x=10, y=10, w=150)
    pdf.output(str(path))
    image.unlink()
    return path


def make_docx(path: Path, blocks: Sequence[tuple[str, str]]) -> Path:
    """A Word document from (style, text) blocks, style "h1"/"h2" for headings or "p" for a paragraph."""
    import docx

    document = docx.Document()
    for style, text in blocks:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1:]))
        else:
            document.add_paragraph(text)
    document.save(str(path))
    return path
