"""The app's entry point: sign-in (or a browser recognised), then the pages the person's role
sees."""

import streamlit as st

from dashboards.session import cookie, recognise, sign_out

PAGES = {
    "rate": "Rate",
    "releases": "Releases",
    "drift": "Drift",
    "retrain": "Retrain",
    "admin": "Admin",
}

st.set_page_config(page_title="evalkit", layout="wide")
who = recognise()
if who is None:
    pages = [st.Page("views/sign_in.py", title="Sign in", url_path="sign_in")]
    cookie()  # forgets a refused or ended session's token
else:
    pages = [
        st.Page(f"views/{name}.py", title=title, url_path=name)
        for name, title in PAGES.items()
        if who.sees(name)
    ]
    with st.sidebar:
        st.caption(f"Signed in as **{who.name}** ({who.role})")
        st.button("Sign out", on_click=sign_out)
        cookie()
st.navigation(pages).run()
