import os

# a plain `pytest` on a machine without a display: Qt would abort the whole session
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
