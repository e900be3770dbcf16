"""Train: placeholder until the training engine lands."""
import streamlit as st

from pages._ui import through_app_shell

through_app_shell()

st.title("Train")
st.write("Train the design from the Design page on CIFAR-10 and watch its loss and accuracy as it learns.")
st.info("Training arrives with the training engine.", icon=":material/construction:")
