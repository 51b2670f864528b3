"""Reference scheduling and prewarm policies (FCFS, SJF, Gittins, LLMSched, BROS, CALVO, EDF, oracles).

They arrive with the simulator's policy interface (issues 3 and 5); this package depends only on the
environment core, never on torch.
"""
