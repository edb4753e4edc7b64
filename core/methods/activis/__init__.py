"""ActiVis (Kahng et al., 2017): the neuron activation matrix and its rows, the instance projection, the model graph."""
