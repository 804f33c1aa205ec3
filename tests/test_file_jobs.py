"""What a run reads and writes (idm_rt.file_jobs.plan_jobs), shared by the command line and the Ray batch job:
never an input as an output, no link out of an input folder unless asked, outputs named after what was named."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from idm_rt.file_jobs import plan_jobs


def image(path) -> None:
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        image(folder / name)
    return folder


def names(jobs) -> list[tuple[str, str]]:
    return [(j.src.path.name, j.dst.path.name) for j in jobs]


def test_an_input_is_never_an_output_even_with_the_folder_as_both(photos):
    plan = plan_jobs([str(photos)], str(photos))
    assert names(plan.jobs) == [("b.jpg", "b.png")]  # b.png is a new file; a.png would be the input itself
    assert plan.problems == [f"{photos / 'a.png'} is an input; skipped {photos / 'a.png'} (choose another output)"]
    assert not plan.existing  # so --overwrite, which adds the existing outputs, cannot reach it either
    plan = plan_jobs([str(photos / "b.jpg"), str(photos / "a.png")], str(photos) + "/")
    assert names(plan.jobs) == [("b.jpg", "b.png")] and "is an input" in plan.problems[0]


def test_a_link_in_the_output_folder_leading_to_an_input_is_refused(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(photos / "a.png", out / "a.png")  # writing out/a.png must not reach the input through it
    plan = plan_jobs([str(photos / "a.png")], str(out) + "/")
    assert not plan.jobs and not plan.existing and "is an input" in plan.problems[0]


def test_links_out_of_an_input_folder_are_skipped_unless_asked(photos, tmp_path):
    outside = tmp_path / "secret.png"
    image(outside)
    os.symlink(outside, photos / "innocent.png")
    os.symlink(photos / "a.png", photos / "alias.png")  # a link within the folder: the same file as a.png
    plan = plan_jobs([str(photos)], str(tmp_path / "out") + "/")
    assert names(plan.jobs) == [("a.png", "a.png"), ("b.jpg", "b.png")]  # alias.png is a.png, done once
    assert len(plan.problems) == 1 and "innocent.png" in plan.problems[0] and str(outside) in plan.problems[0]
    assert "--follow-links" in plan.problems[0]
    plan = plan_jobs([str(photos / "*.png")], str(tmp_path / "out") + "/")  # a glob finds it the same way
    assert "innocent.png" in plan.problems[0] and ("innocent.png", "innocent.png") not in names(plan.jobs)
    plan = plan_jobs([str(photos)], str(tmp_path / "out") + "/", follow_links=True)
    assert ("innocent.png", "innocent.png") in names(plan.jobs) and not plan.problems  # named after the link
    plan = plan_jobs([str(photos / "innocent.png")], str(tmp_path / "one.png"))  # named by the user: followed
    assert names(plan.jobs) == [("innocent.png", "one.png")] and not plan.problems


def test_files_that_are_not_images_and_shared_names_are_said(photos, tmp_path):
    (photos / "notes.txt").write_text("not a picture")
    image(photos / "a.webp")
    plan = plan_jobs([str(photos)], str(tmp_path / "out") + "/")
    assert names(plan.jobs) == [("a.png", "a.png.png"), ("a.webp", "a.webp.png"), ("b.jpg", "b.png")]
    assert any("not images" in n and "notes.txt" in n for n in plan.notes)
    assert any("a.png -> a.png.png" in n for n in plan.notes)


def test_existing_outputs_are_listed_apart_for_the_command_to_decide(photos, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"earlier output")
    plan = plan_jobs([str(photos)], str(tmp_path / "out"))
    assert names(plan.jobs) == [("b.jpg", "b.png")] and names(plan.existing) == [("a.png", "a.png")]
