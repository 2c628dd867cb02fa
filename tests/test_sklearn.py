"""Fitted scikit-learn estimators: shmrt's predict / predict_proba against the estimator's own."""
import numpy as np
import pytest

import shmrt
from models import STRATEGIES  # noqa: E402

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


@pytest.fixture(scope="module")
def cancer():
    return load_breast_cancer(return_X_y=True)


def check_classifier(rt, est, X):
    model = shmrt.load(est)
    want_labels, want_proba = est.predict(X), est.predict_proba(X)
    worst = 0.0
    for s in STRATEGIES:
        with rt.compile(model, strategy=s, max_batch=256) as cm:
            labels, proba = cm.predict(X), cm.predict_proba(X)
            assert labels.tolist() == want_labels.tolist(), (s, np.mean(labels != want_labels))
            assert proba.shape == want_proba.shape
            assert np.abs(proba - want_proba).max() <= 1e-6, (s, np.abs(proba - want_proba).max())
            worst = max(worst, float(np.abs(proba - want_proba).max()))
    print(f"\n{_name(est)}: {len(X)} rows, labels identical, predict_proba max |diff| {worst:.1e} "
          f"over {', '.join(STRATEGIES)}")


def _name(est):
    steps = getattr(est, "steps", None)
    return " + ".join(type(s).__name__ for _, s in steps) if steps else type(est).__name__


def check_regressor(rt, est, X, tol=1e-5):
    model = shmrt.load(est)
    want = est.predict(X)
    worst = 0.0
    for s in STRATEGIES:
        with rt.compile(model, strategy=s, max_batch=256) as cm:
            got = cm.predict(X)
            assert got.shape == want.shape, s
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err <= tol, (s, err)
            worst = max(worst, err)
    print(f"\n{_name(est)}: {len(X)} rows, predict shape {want.shape}, max relative error {worst:.1e}")


def test_logistic_binary(rt, cancer):
    X, y = cancer
    check_classifier(rt, make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y), X)


def test_logistic_multiclass(rt, digits):
    X, y = digits
    check_classifier(rt, make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y), X)


def test_logistic_string_labels(rt, cancer):
    X, y = cancer
    names = np.array(["malignant", "benign"], dtype=object)[y]
    est = make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=5000)).fit(X, names)
    check_classifier(rt, est, X)
    assert shmrt.load(est).classes.tolist() == ["benign", "malignant"]


def test_mlp_classifier_multiclass(rt, digits):
    X, y = digits
    check_classifier(rt, make_pipeline(MinMaxScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, random_state=0))
                     .fit(X, y), X)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_mlp_classifier_binary(rt, cancer, activation):
    X, y = cancer
    est = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), activation=activation, max_iter=300,
                                                        random_state=1)).fit(X, y)
    check_classifier(rt, est, X)


def test_linear_models(rt):
    X, y = load_diabetes(return_X_y=True)
    check_regressor(rt, LinearRegression().fit(X, y), X)
    check_regressor(rt, Ridge(alpha=0.5).fit(X, y), X)
    Y = np.stack([y, -2 * y + 3], axis=1)  # two targets: predict stays [N, 2]
    check_regressor(rt, LinearRegression().fit(X, Y), X)


def test_mlp_regressor(rt):
    X, y = load_diabetes(return_X_y=True)
    check_regressor(rt, make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32,), max_iter=500, random_state=0))
                    .fit(X, y / 100), X)


def test_refusals(cancer):
    X, y = cancer
    with pytest.raises(ValueError, match="not fitted"):
        shmrt.load(LogisticRegression())
    from sklearn.tree import DecisionTreeClassifier
    with pytest.raises(TypeError, match="DecisionTreeClassifier is not supported; expected"):
        shmrt.load(DecisionTreeClassifier().fit(X, y))
    multilabel = MLPClassifier(hidden_layer_sizes=(4,), max_iter=20, random_state=0).fit(X[:, :5], np.stack([y, 1 - y], 1))
    with pytest.raises(ValueError, match="multilabel"):
        shmrt.load(multilabel)
    with pytest.raises(TypeError, match="Pipeline step"):
        from sklearn.decomposition import PCA
        shmrt.load(make_pipeline(PCA(3), LogisticRegression()).fit(X, y))


def test_one_vs_rest_probabilities_are_refused(digits):
    """Older scikit-learn fits multiclass liblinear models one-vs-rest (normalised sigmoids, not a
    softmax); shmrt asks the estimator which it is. Stand-in: the same estimator type with OvR proba."""
    import sklearn.linear_model as lm

    class LogisticRegression(lm.LogisticRegression):
        def predict_proba(self, X):
            p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
            return p / p.sum(axis=1, keepdims=True)

    X, y = digits
    est = LogisticRegression(max_iter=200).fit(X / 16.0, y)
    with pytest.raises(ValueError, match="one-vs-rest .* expected the multinomial"):
        shmrt.load(est)


def test_round_trip_keeps_classes(tmp_path, cancer):
    X, y = cancer
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X, y)
    path = tmp_path / "cancer.shmrt"
    shmrt.load(est).save(path)
    back = shmrt.load(path)
    with shmrt.Runtime(workers=0) as rt0, rt0.compile(back, max_batch=64) as cm:
        assert np.array_equal(cm.predict(X), est.predict(X))
