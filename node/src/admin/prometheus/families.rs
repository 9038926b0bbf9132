//! Building metric families by hand, from values read at scrape time: the node keeps its
//! counters as plain atomics (cheap on the SIP core's thread), so nothing needs to be
//! registered up front and a scrape is one pass over them.

use crate::metrics::histogram::Snapshot;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// Label name/value pairs of one series (the `node` label is added to every one).
pub type Labels = Vec<(&'static str, String)>;

/// The families of one scrape, every series labelled with the node.
pub struct Families {
    node: String,
    out: Vec<MetricFamily>,
}

impl Families {
    /// Nothing collected yet, for the node with this Raft member id.
    pub fn new(node: u64) -> Families {
        Families {
            node: node.to_string(),
            out: Vec::new(),
        }
    }

    /// What was collected, in the order it was added.
    pub fn into_inner(self) -> Vec<MetricFamily> {
        self.out
    }

    fn labels(&self, extra: Labels) -> Vec<LabelPair> {
        std::iter::once(("node", self.node.clone()))
            .chain(extra)
            .map(|(name, value)| {
                let mut l = LabelPair::default();
                l.set_name(name.to_string());
                l.set_value(value);
                l
            })
            .collect()
    }

    /// Adds a family; one with no series is left out (the text format has no way to
    /// say "none", and an empty family is refused by the encoder).
    fn push(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(kind);
        f.set_metric(metrics);
        self.out.push(f);
    }

    /// A counter family with one series per label set.
    pub fn counters(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        let metrics = series
            .into_iter()
            .map(|(labels, v)| {
                let mut c = Counter::default();
                c.set_value(v as f64);
                let mut m = Metric::default();
                m.set_label(self.labels(labels));
                m.set_counter(c);
                m
            })
            .collect();
        self.push(name, help, MetricType::COUNTER, metrics);
    }

    /// A counter without labels of its own.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counters(name, help, vec![(Vec::new(), value)]);
    }

    /// A gauge family with one series per label set.
    pub fn gauges(&mut self, name: &str, help: &str, series: Vec<(Labels, f64)>) {
        let metrics = series
            .into_iter()
            .map(|(labels, v)| {
                let mut g = Gauge::default();
                g.set_value(v);
                let mut m = Metric::default();
                m.set_label(self.labels(labels));
                m.set_gauge(g);
                m
            })
            .collect();
        self.push(name, help, MetricType::GAUGE, metrics);
    }

    /// A gauge without labels of its own.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauges(name, help, vec![(Vec::new(), value)]);
    }

    /// A histogram without labels of its own.
    pub fn histogram(&mut self, name: &str, help: &str, s: Snapshot) {
        let mut h = Histogram::default();
        h.set_sample_count(s.count);
        h.set_sample_sum(s.sum);
        h.set_bucket(
            s.buckets
                .into_iter()
                .map(|(bound, count)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound);
                    b.set_cumulative_count(count);
                    b
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_label(self.labels(Vec::new()));
        m.set_histogram(h);
        self.push(name, help, MetricType::HISTOGRAM, vec![m]);
    }
}
