"""Tests of the pages (pages/, app.py): headless through Streamlit's AppTest (test_app_*), in Chromium
(test_browser_*)."""
