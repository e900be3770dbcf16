"""Runs: placeholder until the training engine lands."""
import streamlit as st

from pages._ui import through_app_shell

through_app_shell()

st.title("Runs")
st.write("Every training run with its design, settings, curves and final accuracy, side by side.")
st.info("Runs arrive with the training engine.", icon=":material/construction:")
