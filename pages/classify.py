"""Classify: placeholder until the training engine lands."""
import streamlit as st

from pages._ui import through_app_shell

through_app_shell()

st.title("Classify")
st.write("Give a trained network an image and see which of the ten CIFAR-10 classes it thinks it shows.")
st.info("Classifying arrives with the training engine.", icon=":material/construction:")
