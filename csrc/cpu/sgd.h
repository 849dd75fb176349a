// SGD (momentum, dampening, nesterov) as an element functor, op for op torch's
// sgd._single_tensor_sgd (Note [torch's rounding] in adam.h). Included inside namespace
// fusedopt::cpu::FUSEDOPT_ISA.

template <class C>
struct SgdMath {
  C grad_scale, grad_coef, weight_decay, momentum, one_minus_dampening, neg_lr;
  bool use_decay, seed, nesterov;

  explicit SgdMath(const SgdTensor& t)
      : grad_scale(static_cast<C>(t.grad_scale)),
        grad_coef(static_cast<C>(t.grad_coef)),
        weight_decay(static_cast<C>(t.weight_decay)),
        momentum(static_cast<C>(t.momentum)),
        one_minus_dampening(static_cast<C>(t.one_minus_dampening)),
        neg_lr(static_cast<C>(t.neg_lr)),
        use_decay(t.weight_decay != 0),
        seed(t.seed),
        nesterov(t.nesterov) {}

  // x: param[, momentum_buffer]
  template <class V, int K>
  void operator()(V g, V (&x)[K]) const {
    V& p = x[0];
    g = g * V::set1(grad_scale) * V::set1(grad_coef);     // unscale, then clip (and maximize)
    if (use_decay) g = fma(p, V::set1(weight_decay), g);   // grad.add(param, alpha=wd)
    if constexpr (K == 2) {
      V& buf = x[1];
      // buf.mul_(momentum).add_(grad, alpha=1 - dampening); the first step clones grad
      buf = seed ? g : fma(g, V::set1(one_minus_dampening), buf * V::set1(momentum));
      g = nesterov ? fma(buf, V::set1(momentum), g) : buf;
    }
    p = fma(g, V::set1(neg_lr), p);                        // param.add_(grad, alpha=-lr)
  }
};

template <class S, bool kBuffer, bool kMaster>
void sgd_kernel(const SgdTensor& t, int64_t begin, int64_t end) {
  SgdMath<compute_t<S>> f(t);
  if constexpr (kBuffer) {
    S* const rw[2] = {static_cast<S*>(t.param), static_cast<S*>(t.momentum_buffer)};
    elementwise<kMaster>(f, static_cast<const S*>(t.grad), rw, t.master, begin, end);
  } else {
    S* const rw[1] = {static_cast<S*>(t.param)};
    elementwise<kMaster>(f, static_cast<const S*>(t.grad), rw, t.master, begin, end);
  }
}
