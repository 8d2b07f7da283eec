"""The web page for people: a study browser at /, signed in with a key (see `site`)."""
