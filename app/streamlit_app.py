"""Virtual Cell Explorer: the Streamlit router (``vcell serve BUNDLE`` runs this file).

Five pages (Explore, Compare, Neighbours, Perturb, Model), one module each in ``views/``.
The bundle path comes from the ``VCELL_BUNDLE`` environment variable; without a readable
bundle every page shows one error sentence and what to run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a plain checkout too (no `pip install -e .`)
    sys.path.insert(0, str(ROOT))

from app.components import STRICT_ENV, current_atlas, sidebar_header  # noqa: E402

st.set_page_config(page_title="Virtual Cell Explorer", page_icon=":material/biotech:", layout="wide")
st.set_option("client.toolbarMode", "viewer")  # no developer menu / deploy button for users
if os.environ.get(STRICT_ENV) != "1":  # tests keep full tracebacks; users never see one
    st.set_option("client.showErrorDetails", "type")

PAGES = [
    st.Page("views/explore.py", title="Explore", icon=":material/scatter_plot:", default=True),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/neighbours.py", title="Neighbours", icon=":material/hub:"),
    st.Page("views/perturb.py", title="Perturb", icon=":material/science:"),
    st.Page("views/model.py", title="Model", icon=":material/model_training:"),
]

page = st.navigation(PAGES)
st.sidebar.markdown("### :material/biotech: Virtual Cell Explorer")
atlas = current_atlas()  # an error box and a stop when there is no readable bundle
sidebar_header(atlas)
page.run()
