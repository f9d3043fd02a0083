"""Shipped type packs (installed as kvm_vol._symbols); see regenerate.py."""
