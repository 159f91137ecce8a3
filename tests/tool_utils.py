"""Shared by the tests: load a script of tools/ as a module, tiny datasets, tiny configs, a
recording torch.compile backend."""
import contextlib
import importlib.util
import itertools
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_QUICKSTART = osp.join(ROOT, 'configs', 'detection', 'quickstart_unireplknet_a_shapes.py')
SEG_QUICKSTART = osp.join(ROOT, 'configs', 'segmentation', 'quickstart_unireplknet_a_shapes.py')


def load_tool(name: str):
    """``tools/<name>.py`` as a module (tools/ is not a package), so tests call its ``main``."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}',
                                                  osp.join(ROOT, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def visualizers_restored():
    """mmengine's visualizers as they were before the block, afterwards. They are process-wide
    (ManagerMixin): a runner takes the visualizer named 'visualizer' if one exists, of whatever
    framework, and its visualization hook the one created last. A tool run is one framework per
    process; a test that creates visualizers of one framework (an inferencer creates a new one
    per call) must not leave them to a later test's runner of the other."""
    from mmengine.visualization import Visualizer

    def classes(cls):
        yield cls
        for sub in cls.__subclasses__():
            yield from classes(sub)

    saved = {cls: cls._instance_dict.copy() for cls in set(classes(Visualizer))}
    try:
        yield
    finally:
        for cls, instances in saved.items():
            cls._instance_dict.clear()
            cls._instance_dict.update(instances)


def tiny_seg_config(tmp_path, data_root: str, **overrides) -> str:
    """The segmentation quick start on ``data_root`` with single-process loaders."""
    extra = '\n'.join(f'{k} = {v!r}' for k, v in overrides.items())
    path = tmp_path / 'tiny_seg.py'
    path.write_text(f"""_base_ = [{SEG_QUICKSTART!r}]
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1))
{extra}
""")
    return str(path)


def tiny_det_config(tmp_path, data_root: str) -> str:
    """The detection quick start on ``data_root`` with single-process loaders."""
    root = data_root.rstrip('/') + '/'
    ann_val = root + 'annotations/instances_val.json'
    path = tmp_path / 'tiny_det.py'
    path.write_text(f"""_base_ = [{DET_QUICKSTART!r}]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={root!r}))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root={root!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={ann_val!r})
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=1))
""")
    return str(path)


_backend_ids = itertools.count()


def recording_backend(wrap_outputs=None):
    """A new torch.compile backend, registered under a fresh name: torch's aot_eager
    (AOTAutograd and its partitioner, as Inductor has them, which gradient checkpointing's
    recomputation needs) that records the forward graphs it is given (aten-level) and runs them
    as they are, or with their outputs changed by ``wrap_outputs``. It shows what went through
    the compiler, cheaply: Inductor would take minutes on 2 cores. Returns (name, graphs)."""
    from torch._dynamo import register_backend
    from torch._dynamo.backends.debugging import aot_eager, boxed_nop
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        run = boxed_nop(gm, example_inputs)
        if wrap_outputs is None:
            return run

        def changed(args):
            return wrap_outputs(run(args))
        changed._boxed_call = True  # AOTAutograd's calling convention, as boxed_nop's
        return changed

    def backend(gm, example_inputs, **kwargs):
        return aot_eager(gm, example_inputs, fw_compiler=record, **kwargs)
    name = f'mmunirep_test_backend_{next(_backend_ids)}'
    register_backend(compiler_fn=backend, name=name)
    return name, graphs
