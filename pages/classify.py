"""Classify: give a trained network images and see what it thinks they show, and where it looked.

Pick a run and one of its checkpoints, then drop images. Every image that decodes gets the 32x32
input the network sees, a Grad-CAM overlay and the probability of all ten classes; a file that
doesn't gets its own error and the rest go on. An image unlike the network's training images (its score below
the run's threshold: core.deploy.prediction) is said to be so, in words, beside its answer. The work is in
core.deploy.predict; results are cached per checkpoint save and files, so moving any control does not decode the
images again. The images, checkpoint and TTA stay in session state across a page switch. The flip toggle starts at
the run's own test-time augmentation, again whenever another run is picked.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.images import IMAGE_SUFFIXES
from core.deploy.predict import Classifier, Prediction, classify, prediction_rows, predictions_csv, sample_files
from core.nn.visual import cam_overlay, enlarge
from core.report.charts import probability_chart
from core.runs.run import Run
from core.runs.choice import default_run
from pages._ui import (RUN_CHOICE, checkpoint_id, open_classifier, runs_or_stop, select_checkpoint,
                       select_run, through_app_shell)

through_app_shell()

UPLOAD = "classify_upload"
TTA = "classify_tta"
TTA_RUN = "classify_tta:run"  # the run whose own test-time augmentation the toggle was last set to
KEPT = "classify_files"       # the last uploads' (name, bytes): a file uploader forgets them on a page switch
SAMPLES = "classify_samples"  # the built-in test images, when asked for instead of uploads
SCALE = 6                     # the 32x32 input is shown 192 px wide, each of its pixels a visible square
SIDE = SCALE * 32             # the width every image of a prediction is shown at
ASPECT_LIMIT = 3              # an image longer than 3:1 has most of it cut away: its card says so
MANY = 6                      # beyond this many files, a table of them all comes before the details


@st.cache_data(show_spinner="Classifying…", max_entries=8)
def predictions(_classifier: Classifier, checkpoint: tuple, files: tuple[tuple[str, bytes], ...],
                tta_flip: bool) -> list[Prediction]:
    """`checkpoint` (checkpoint_id) stands for the classifier in the cache key."""
    return classify(_classifier, list(files), tta_flip=tta_flip, grad_cam=True)


def try_samples() -> None:
    st.session_state[SAMPLES] = tuple(sample_files())


TRAINED_ON = "what the network was trained on (small photos of the ten CIFAR-10 classes)"


def why_unfamiliar(result: Prediction) -> str:
    pixels = result.pixels
    if pixels["contrast"] < pixels["contrast_low"]:
        return "it is nearly flat, almost one colour, flatter than nearly all of the run's test images"
    if pixels["roughness"] > pixels["roughness_high"]:
        return "it is grainier than nearly all of the run's test images, like noise"
    return (f"the network's evidence for every class (energy {result.score:.2f}) is weaker than for 96% of the run's "
            f"own test images (the threshold is {result.threshold:.2f})")


def summary_table(results: list[Prediction], classes: list[str]) -> pd.DataFrame:
    """prediction_rows as a table: a missing number is an empty cell, not None."""
    table = pd.DataFrame(prediction_rows(results, classes))
    return table.astype(dict.fromkeys(["Probability", "Second probability", "OOD score", *classes], "Float64"))


def show_prediction(result: Prediction) -> None:
    first, second = result.top(2)
    with st.container(border=True):
        st.markdown(f"#### {first['class']} · {first['probability']:.0%}")
        st.caption(f"{result.file} · next: {second['class']} {second['probability']:.0%}")
        if result.ood:
            st.warning(f"This image does not look like {TRAINED_ON}: {why_unfamiliar(result)}. Its answer is a guess "
                       f"among those ten classes, whatever the image shows.", icon=":material/help:")
        width, height = result.size
        if max(width, height) > ASPECT_LIMIT * min(width, height):
            side = min(width, height)
            st.warning(f"Only the central {side:,}×{side:,} square of this {width:,}×{height:,} image was seen: the "
                       f"network takes a square. Crop the part that matters to a square, or read this answer as "
                       f"about that square alone.", icon=":material/crop:")
        image, seen, cam, chart = st.columns([1, 1, 1, 2], vertical_alignment="top")
        # the same size for all three, so a small original is not lost beside its enlarged input
        height, width = result.thumbnail.shape[:2]
        image.image(result.thumbnail, caption="Your image", width=SIDE * width // max(height, width))
        seen.image(enlarge(result.input, SCALE), caption="What the network sees: 32×32", width=SIDE)
        cam.image(cam_overlay(result.input, result.cam, SCALE), caption=f"Where it saw {first['class']} (Grad-CAM)",
                  width=SIDE)
        chart.altair_chart(probability_chart(result.probabilities), height=SIDE + 40)


# ---- the page's sections ---------------------------------------------------------------------------------

def pick_network(runs: list[Run]) -> tuple[Run, str, Classifier | None, bool]:
    """A run, its checkpoint and the flip toggle side by side: (run, checkpoint tag, the network they name or None
    when it can't be opened (it says why), whether to flip)."""
    pick_run, pick_tag, pick_tta = st.columns([3, 2, 2], vertical_alignment="bottom")
    with pick_run:
        run = select_run("Run", runs, RUN_CHOICE, default_run(runs))
    with pick_tag:
        tag = select_checkpoint("classify_tag",
                                help="Best: the epoch with the highest accuracy. Last: the newest epoch.")
    classifier = open_classifier(run, tag)
    own_tta_flip = classifier is not None and classifier.own_tta_flip
    if st.session_state.get(TTA_RUN) != run.name:  # before the toggle is drawn: a widget's state is set only then
        st.session_state[TTA] = own_tta_flip
        st.session_state[TTA_RUN] = run.name
    tta_flip = pick_tta.toggle("Flip test-time augmentation", key=TTA, persist_state="session",
                               help="Average the prediction for each image and its mirror image: often a little more "
                                    "accurate, since CIFAR-10 classes look the same mirrored; with 1-pixel shifts "
                                    "too (6 views) for a run tested with them. It starts as the run was tested.")
    if classifier is not None:
        st.caption(f"Test-time augmentation: {classifier.tta_said(tta_flip)}.")
    return run, tag, classifier, tta_flip


def choose_images() -> tuple[tuple[str, bytes], ...]:
    """The images to classify as (name, bytes): those dropped now, else those dropped before (a file uploader
    forgets them on a page switch), else the built-in samples when asked for, else none yet."""
    # the uploader's list of files scrolls inside two rows of chips, which reads as cut off: it shows them all
    st.html("<style>.st-key-classify_upload [data-testid='stFileChips'] { max-height: none; }</style>")
    uploads = st.file_uploader("Images", type=[suffix.lstrip(".") for suffix in IMAGE_SUFFIXES],
                               accept_multiple_files=True, key=UPLOAD,
                               help="PNG, JPEG, WebP, BMP, GIF or TIFF, any size or colour mode. The network sees "
                                    "the central square, shrunk to 32×32.")
    if uploads:
        files = st.session_state[KEPT] = tuple((upload.name, upload.getvalue()) for upload in uploads)
        st.session_state.pop(SAMPLES, None)
        return files
    if st.session_state.get(KEPT):
        files = st.session_state[KEPT]
        kept, clear = st.columns([4, 1], vertical_alignment="center")
        kept.caption(f"{len(files)} image{'s' if len(files) > 1 else ''} you uploaded before: "
                     f"{', '.join(name for name, _ in files[:5])}{', …' if len(files) > 5 else ''}. "
                     f"Drop images above to classify others.")
        clear.button("Clear them", icon=":material/close:", width="stretch",
                     on_click=lambda: st.session_state.pop(KEPT, None))
        return files
    if SAMPLES in st.session_state:
        st.caption("Built-in CIFAR-10 test images, one per class; each file is named after its true class.")
        return st.session_state[SAMPLES]
    hint, samples = st.columns([4, 1], vertical_alignment="center")
    hint.info("Drop images above, or try the network on test images it has never trained on.",
              icon=":material/info:")
    samples.button("Try ten test images", icon=":material/photo_library:", width="stretch", on_click=try_samples)
    return ()


def show_all_in_a_table(results: list[Prediction], classifier: Classifier, run: Run, tag: str, tta_flip: bool) -> None:
    """Many images: one row each, and all the predictions as a CSV to download."""
    table = summary_table(results, classifier.classes)
    errors = ["Error"] if table["Error"].astype(bool).any() else []
    shown = table[["File", "Top class", "Probability", "Second class", "Looks like its training images", *errors]]
    st.dataframe(shown.assign(Probability=100 * shown["Probability"]), hide_index=True, column_config={
        "Probability": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100)})
    made = predictions_csv(results, classifier.classes, run.name, tag, classifier.tta_name(tta_flip))
    st.download_button("Download all predictions as CSV", made,
                       file_name=f"predictions-{run.name}-{tag}{'-tta' if tta_flip else ''}.csv",
                       mime="text/csv", on_click="ignore", icon=":material/download:")


def show_predictions(results: list[Prediction], classifier: Classifier, run: Run, tag: str, tta_flip: bool) -> None:
    """Each file that did not decode, its error; many files, a table first; the images unlike the training ones,
    named together; then each image's prediction."""
    for result in results:
        if not result.ok:
            st.error(result.error, icon=":material/broken_image:")
    if len(results) > MANY:
        show_all_in_a_table(results, classifier, run, tag, tta_flip)
    unfamiliar = [result.file for result in results if result.ood]
    if unfamiliar:
        st.warning(f"{len(unfamiliar)} of {len(results)} images {'does' if len(unfamiliar) == 1 else 'do'} not look "
                   f"like {TRAINED_ON}: {', '.join(unfamiliar[:8])}{', …' if len(unfamiliar) > 8 else ''}. Their "
                   f"answers are guesses; each says why below.", icon=":material/help:")
    for result in results:
        if result.ok:
            show_prediction(result)


# ---- the page -----------------------------------------------------------------------------------------------

st.title("Classify")
st.write("Give a trained network images and see which of the ten CIFAR-10 classes it thinks each shows, "
         "and where in the image it found the evidence.")

runs = runs_or_stop("Classifying")
run, tag, classifier, tta_flip = pick_network(runs)
files = choose_images()
if files and classifier is not None:
    show_predictions(predictions(classifier, checkpoint_id(run, tag, classifier), files, tta_flip), classifier, run,
                     tag, tta_flip)
