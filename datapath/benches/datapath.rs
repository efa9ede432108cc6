//! Criterion benchmarks of the datapath's fast and slow paths (`cargo bench -p
//! skein-datapath`). The `datapath-bench` binary prints the same scenarios as
//! `name=value` figures.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use skein_datapath::benchkit::{self, ClassifierWorkload, CountSink};
use skein_datapath::datapath::DatapathConfig;
use skein_datapath::key::FlowKey;

fn fast_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("fast_path");
    g.throughput(Throughput::Elements(32));
    let (dp, mut batch) = benchkit::forwarding_scenario(DatapathConfig::default());
    let mut w = dp.worker();
    let mut sink = CountSink::default();
    g.bench_function("microflow_hit_batch32", |b| b.iter(|| dp.process_batch(&mut w, &mut batch, 1, &mut sink)));
    let no_micro = DatapathConfig { microflow_entries: 0, ..DatapathConfig::default() };
    for masks in [1, 8, 32] {
        let (dp, mut batch) = benchkit::megaflow_masks_scenario(masks, no_micro);
        let mut w = dp.worker();
        for i in 0..100 {
            dp.process_batch(&mut w, &mut batch, i, &mut sink);
        }
        dp.maintain(100);
        g.bench_function(format!("megaflow_hit_{masks}masks_batch32"), |b| {
            b.iter(|| dp.process_batch(&mut w, &mut batch, 200, &mut sink))
        });
    }
    g.finish();
    black_box(sink);
}

fn slow_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("slow_path");
    g.throughput(Throughput::Elements(32));
    let (dp, mut next_packet) =
        benchkit::ten_table_scenario(DatapathConfig { microflow_entries: 0, ..DatapathConfig::default() });
    let mut w = dp.worker();
    let mut sink = CountSink::default();
    let mut now = 0;
    g.bench_function("upcall_10_tables_batch32", |b| {
        b.iter_batched_ref(
            || (0..32).map(|_| next_packet()).collect::<Vec<_>>(),
            |batch| {
                now += 1;
                dp.process_batch(&mut w, batch, now, &mut sink)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn classifier(c: &mut Criterion) {
    let w = ClassifierWorkload::new(10_000, 100, Some(10), 10_000, 42);
    let cls = w.classifier();
    let mut g = c.benchmark_group("classifier_ovs_workload");
    g.throughput(Throughput::Elements(w.lookups.len() as u64));
    g.bench_function("lookup", |b| {
        b.iter(|| w.lookups.iter().filter(|k| cls.lookup(black_box(k), None).is_some()).count())
    });
    g.bench_function("lookup_with_wildcards", |b| {
        b.iter(|| {
            w.lookups
                .iter()
                .filter(|k| {
                    let mut wc = FlowKey::ZERO;
                    cls.lookup(black_box(k), Some(&mut wc)).is_some()
                })
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, fast_path, slow_path, classifier);
criterion_main!(benches);
