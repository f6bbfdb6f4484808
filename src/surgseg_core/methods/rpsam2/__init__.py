"""RP-SAM2 (Zhaksylyk et al.): a shift block that moves a click to where
SAM2 segments the instrument best, trained on a frozen SAM2.

Modules: ``block`` (the shift block, eq. 1-2), ``model`` (RP-SAM2 = frozen
SAM2 + block; inference through the engine's prompt hook; base identity),
``loss`` (Dice + L_dist + L_out, candidate points), ``train`` (the training
step on cached frame features), ``data`` (image+mask, Supervisely
(Cataract-1K), COCO and EndoVis readers), ``evaluate`` (Table 1: 10
single-click seeds, mDSC / mHD95), ``predict`` (pseudo masks from clicks)
and ``spec`` (the registered ``rpsam2`` method). Importing this package is
cheap.

    from surgseg_core.methods.rpsam2.model import load_rpsam2
    rp = load_rpsam2("runs/rp/checkpoints/best.pt")
    session = rp.click_session()
    result = session.segment_frame(frames, rp.sam, 12, [{"frame": 12, "obj_id": 1, "points": [[x, y]], "labels": [1]}])
"""
