"""Home: what PARL is, Eq. (1), the checkpoints at hand, where to start."""
import streamlit as st

from dashboard import config, state, tables, ui

state.through_app()

st.title("PARL Lab")
st.markdown(
    "An ensemble is several classifiers voting together; it is only robust if an "
    "adversarial example that fools one member does not also fool the others. "
    "Such examples *transfer* when the members' input gradients point the same way. "
    "**PARL** (Pairwise Adversarially Robust Loss) trains the members together and adds a "
    "penalty for the cosine similarity of their gradients, layer by layer, for every pair. "
    "The members then learn different features, so an attack crafted on one transfers less "
    "to the rest. This lab lets you train such ensembles live and see the effect: gradient "
    "maps, layer-wise similarity (CKA) and accuracy under attack.")
st.latex(r"\mathrm{PARL}(\mathcal{M}_T)=\gamma_1\frac{1}{|\mathcal{X}|}\sum_{x\in\mathcal{X}}"
         r"\sum_{i=1}^{N}J_{\mathcal{M}_i}(x,y)\;+\;\gamma_2\!\!\sum_{1\le i<j\le N}"
         r"\mathcal{R}(\mathcal{M}_i,\mathcal{M}_j)")
st.caption("Eq. (1) of the paper. The first term is each member's cross-entropy (accuracy); "
           "R(Mᵢ, Mⱼ) is the mean over training examples of the summed cosine similarity of "
           "the two members' input gradients at their first K layers. γ₁ and γ₂ trade "
           "accuracy against diversity.")

st.subheader("Checkpoints")
df = tables.checkpoint_table()
if df.empty:
    st.info("No checkpoints yet: train one on the **Train** page.")
else:
    ui.show_table(df, "Every ensemble in the checkpoint folder. Clean accuracy is the majority vote "
                  "on held-out test examples at the end of training; mean R per layer is the average "
                  "pairwise gradient cosine (lower = more diverse; its floor is −1/(M−1)); epochs and "
                  "training images give the scale each was trained at (the paper trains on all 50,000 "
                  "CIFAR training images).", key="home_ckpts",
                  title="checkpoints", hide_index=True,
                  column_config=tables.column_config(),
                  prov=ui.provenance(settings={"folder": str(config.checkpoint_dir())}))

st.subheader("Where to start")
LINKS = [("pages/train.py", "Train an ensemble (≈10 s on digits)", ":material/model_training:"),
         ("pages/gradients.py", "Compare gradients (Figure 1)", ":material/gradient:"),
         ("pages/robustness.py", "Attack it (Figures 3–5)", ":material/shield:"),
         ("pages/diversity.py", "Layer-wise CKA (Figure 2)", ":material/grid_on:"),
         ("pages/checkpoints.py", "Manage and compare checkpoints", ":material/inventory_2:")]
if st.session_state.get("_app_seen"):  # page links exist only inside app.py's navigation
    for i, (path, label, icon) in enumerate(LINKS):
        if i % 3 == 0:
            c = st.columns(3)
        c[i % 3].page_link(path, label=label, icon=icon)
else:  # this page run on its own (`streamlit run pages/home.py`)
    st.markdown("\n".join(f"- {label}" for _, label, _ in LINKS))
    st.caption("Run `streamlit run app.py` to open these views from here.")
