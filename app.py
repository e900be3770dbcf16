"""ResNet Studio: design, train and use residual networks for CIFAR-10 under a 5M-parameter budget."""
import streamlit as st

# an emoji favicon is drawn in the browser: a :material/...: one is fetched from fonts.gstatic.com, which an offline
# machine cannot reach (every page logged ERR_NAME_NOT_RESOLVED, and the tab showed "Λ")
st.set_page_config(page_title="ResNet Studio", page_icon="🧠", layout="wide")

st.navigation([
    st.Page("pages/design.py", title="Design", icon=":material/architecture:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("pages/search.py", title="Search", icon=":material/travel_explore:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:"),
], position="top").run()
