"""Read the outputs (or inputs) of named layers of any ``nn.Module`` during its forward pass, with forward hooks."""

import difflib

from torch import nn

from errors import InputError


class ModelWrapper(nn.Module):
    """Wraps ``model`` so that ``forward`` returns the outputs of the layers named in ``output_layer_names``.

    Names are those of ``model.named_modules()`` (for example ``layer4.1`` of a torchvision ResNet).
    ``forward`` returns a list in the order of the names, or the single output when ``return_single`` is
    True; with ``read_input``, each layer's (first) input instead of its output, as a classifier receives the
    pre-logits feature. ``remove_hooks()`` detaches the hooks and leaves ``model`` as it was.
    """

    def __init__(self, model, output_layer_names, return_single=False, read_input=False):
        super().__init__()
        if isinstance(output_layer_names, str):
            output_layer_names = [output_layer_names]
        self.model = model
        self.output_layer_names = list(output_layer_names)
        self.return_single = return_single
        if return_single and len(self.output_layer_names) != 1:
            raise InputError('return_single needs exactly one layer name, got '
                             f'{len(self.output_layer_names)}')
        modules = dict(model.named_modules())
        for name in self.output_layer_names:
            if name not in modules or name == '':
                nearest = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.5)
                hint = f'nearest: {", ".join(nearest)}' if nearest else \
                    f'valid names include: {", ".join(n for n in list(modules)[1:9])}, ...'
                raise InputError(f'unknown layer name {name!r} for {type(model).__name__} ({hint})')
        self._outputs = {}
        if read_input:
            self._handles = [modules[name].register_forward_pre_hook(self._input_saver(name))
                             for name in self.output_layer_names]
        else:
            self._handles = [modules[name].register_forward_hook(self._saver(name))
                             for name in self.output_layer_names]

    def _saver(self, name):
        def save_output(module, inputs, output):
            self._outputs[name] = output
        return save_output

    def _input_saver(self, name):
        def save_input(module, inputs):
            self._outputs[name] = inputs[0]
        return save_input

    def forward(self, x):
        self._outputs = {}
        self.model(x)
        outputs = [self._outputs.pop(name) for name in self.output_layer_names]
        return outputs[0] if self.return_single else outputs

    def remove_hooks(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []
