"""Accuracy checks: does the deployed graph give the same masks and track ids as PyTorch, frame after frame?"""
