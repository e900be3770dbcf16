"""ResNet Studio: design, train and use residual networks for CIFAR-10 under a 5M-parameter budget."""
import streamlit as st

st.set_page_config(page_title="ResNet Studio", layout="wide")
st.title("ResNet Studio")
st.write("Design, train and use residual networks for CIFAR-10 within 5,000,000 parameters.")
