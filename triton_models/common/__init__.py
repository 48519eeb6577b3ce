"""Pure helpers shared by the Triton python models (stdlib + numpy only).

The Triton models put this folder on sys.path and import its modules flat
(``import sentences``); the pipelines and tests import it as the package
``rtmedia_models_common``.
"""
