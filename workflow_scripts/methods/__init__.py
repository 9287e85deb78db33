"""Every updater as a registered method (see ``methods.base``); neuron strategies in ``methods.neurons``."""
