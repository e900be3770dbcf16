"""Display helpers shared by the pages (a module, not a page: app.py's st.navigation lists the pages)."""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def through_app_shell() -> None:
    """Run this page inside app.py's navigation, also when it is the server's first request.

    Streamlit treats a folder named pages/ beside app.py as a legacy multipage app until app.py has
    called st.navigation once, so a deep link (say /train) as the first request after a start
    would run this page alone: no navigation, no wide layout. Clear that legacy flag and rerun,
    which now goes through app.py to the same page. Only on a session's first run: a later rerun
    would swallow the click that caused it.
    """
    first_run = "shell_checked" not in st.session_state
    st.session_state["shell_checked"] = True
    if first_run and PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
