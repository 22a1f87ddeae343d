"""dgmbook: the tested code behind the executable textbook *Deep generative models and learning
beyond supervised gradients*. Chapters import from here; see the package README for a map."""

__version__ = "0.1.0"
