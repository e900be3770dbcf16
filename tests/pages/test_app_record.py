"""The Runs and Evaluate pages show a run's reproducibility record, and Runs offers the report as a download,
through Streamlit's AppTest on a run the engine really trained."""

from streamlit.testing.v1 import AppTest

from core.runs.record import read_record
from tests.helpers import APP


def record_shown(app: AppTest) -> dict:
    (expander,) = [e for e in app.expander if e.label == "Reproducibility record"]
    assert not expander.dataframe  # a data frame cuts long values off: a table wraps them
    table = expander.table[0].value
    return dict(zip(table.index, table["Value"]))


def test_runs_and_evaluate_show_the_record_and_runs_offers_the_report(trained_runs, trained, monkeypatch):
    monkeypatch.setenv("RESNET_STUDIO_RUNS", str(trained_runs))
    record = read_record(trained.record_path)
    app = AppTest.from_file(APP, default_timeout=300).run()
    for page in ("pages/runs.py", "pages/evaluate.py"):
        app.switch_page(page).run()
        assert not app.exception, [e.value for e in app.exception]
        shown = record_shown(app)
        assert shown["command"] == record["command"] and shown["torch"] == record["torch"]["version"]
        assert shown["data sha256"] == record["data"]["sha256"]
        if record["git"]:
            assert shown["code"].startswith(record["git"]["commit"])
    app.switch_page("pages/runs.py").run()
    (button,) = [b for b in app.download_button if b.label == "Report"]
    assert "opens offline" in button.help
