"""The distribute path of lib.crf: a CRF and a Bi-MEMM tagger under MirroredStrategy on two logical CPUs,
in mixed precision, with the loss scaled per replica exactly as Keras scales its own losses."""

from lib.testing import run_under_mirrored_strategy


def test_taggers_train_under_mirrored_strategy_in_mixed_precision():
    run_under_mirrored_strategy("""
        from lib import crf
        rng = np.random.default_rng(0)
        ids = rng.integers(1, 10, size=(128, 8)).astype("int32")
        ids[np.arange(8)[None] >= rng.integers(2, 9, size=(128, 1))] = 0
        tags = (ids % 3).astype("int32")

        def make(head):
            keras.utils.set_random_seed(0)
            encoder = keras.Sequential([keras.layers.Embedding(10, 8, mask_zero=True), keras.layers.Dense(3)])
            return crf.SequenceTagger(encoder, head)

        # the loss of the same weights, with and without the strategy: the per-replica scaling is right
        plain = make(crf.CRF(3))
        plain.compile(optimizer="sgd")
        expected = plain.evaluate(ids, tags, batch_size=32, verbose=0)
        with strategy.scope():
            mirrored = make(crf.CRF(3))
            mirrored.compile(optimizer="sgd")
        mirrored(ids[:1])
        mirrored.set_weights(plain.get_weights())
        got = mirrored.evaluate(ids, tags, batch_size=32, verbose=0)
        assert abs(got - expected) < 1e-4 * expected, (got, expected)

        keras.config.set_dtype_policy("mixed_float16")
        for head in (crf.CRF(3, use_boundary_transitions=True), crf.MEMM(3, direction="both")):
            with strategy.scope():
                tagger = make(head)
                tagger.compile(optimizer=keras.optimizers.Adam(0.05))
            losses = tagger.fit(ids, tags, batch_size=32, epochs=4, verbose=0).history["loss"]
            assert all(np.isfinite(losses)) and min(losses) >= 0 and losses[-1] < 0.5 * losses[0], losses
            predicted = tagger.predict(ids, batch_size=32, verbose=0)
            assert (predicted[ids == 0] == -1).all()
            assert (predicted[ids != 0] == tags[ids != 0]).mean() > 0.95
        print("ok")
    """)
