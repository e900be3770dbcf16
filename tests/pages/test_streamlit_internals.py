"""The one Streamlit internal the app relies on, checked so that an upgrade that changes it fails here, loudly.

pages/_ui.py `through_app_shell` clears `PagesManager.uses_pages_directory`, the flag that makes a deep
link as a server's first request run a page outside app.py's navigation. It does what st.navigation
itself does; if Streamlit renames the flag or stops reading it, deep links break quietly in the app.
"""
import inspect
import re

import streamlit
from streamlit.commands import navigation
from streamlit.runtime import pages_manager
from streamlit.runtime.scriptrunner import script_runner
from tests.helpers import ROOT

UPGRADE = "Streamlit changed PagesManager.uses_pages_directory: see through_app_shell in pages/_ui.py"


def test_the_pages_directory_flag_is_where_the_app_reaches_for_it():
    assert "uses_pages_directory" in vars(pages_manager.PagesManager), UPGRADE
    assert pages_manager.PagesManager.__annotations__["uses_pages_directory"] in ("bool | None", bool | None), UPGRADE


def test_streamlit_clears_and_reads_the_flag_as_the_app_does():
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation), UPGRADE
    assert "if PagesManager.uses_pages_directory:" in inspect.getsource(script_runner), UPGRADE


def test_streamlit_is_the_version_these_checks_ran_on():
    pinned = re.search(r"^streamlit==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert streamlit.__version__ == pinned, f"streamlit {streamlit.__version__} installed, {pinned} pinned: {UPGRADE}"
