"""Cached feature maps of the dropped stages: the arrays and their files (`features`) and
their life cycle in a run (`keeper`: create, fill, replace, retire, reopen, rebuild).

Never imports models or train: the extraction arrives as a callable.
"""
