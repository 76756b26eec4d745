"""Small torch pieces shared by the policy and the world model: the hashed bag-of-words text encoder, flow-matching samplers."""

from prophrl_common.threads import configure_threads

configure_threads()  # before any module of this package imports torch (OpenMP)
