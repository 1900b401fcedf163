"""One module (or package) per outside system; the pure core (preview_stack) imports none."""
