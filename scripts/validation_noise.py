"""Validation table with noise floors: reads DIR/v_{W}_{plain,barriers}_{A,B}.{csv,json} written by
`cptune validate --csv/--json` (runs A and B minutes apart) and prints one Markdown row per run.
usage: validation_noise.py DIR"""
import csv, json, statistics, sys, itertools
DIR = sys.argv[1] if len(sys.argv) > 1 else "."
def load(p):
    rows=list(csv.DictReader(open(p)))
    by={}
    for r in rows: by.setdefault(r['shape_index'],{})[r['candidate']]=float(r['measured_s'])
    return by
def tau(a,b):
    keys=sorted(a); c=d=0
    for x,y in itertools.combinations(keys,2):
        s=(a[x]-a[y])*(b[x]-b[y])
        if s>0: c+=1
        elif s<0: d+=1
    return (c-d)/max(1,c+d)
def noise(pa,pb):
    A,B=load(pa),load(pb)
    diffs=[]; taus=[]; best_same=0
    for s in A:
        for k in A[s]: diffs.append(abs(A[s][k]-B[s][k])/B[s][k])
        taus.append(tau(A[s],B[s]))
        best_same += min(A[s],key=A[s].get)==min(B[s],key=B[s].get)
    return statistics.median(diffs), statistics.median(taus), best_same, len(A)
def err(p):
    rows=list(csv.DictReader(open(p)))
    return statistics.median(abs(float(r['predicted_s'])-float(r['measured_s']))/float(r['measured_s']) for r in rows), len(rows)
print('| world | phases | run | median error | Kendall tau (median) | predicted best = measured | within 5% | noise floor A vs B: median diff, tau, same best |')
print('|---|---|---|---|---|---|---|---|')
for W in (2,4):
    for mode in ('plain','barriers'):
        nf=noise(DIR + f'/v_{W}_{mode}_A.csv',DIR + f'/v_{W}_{mode}_B.csv')
        for rep in 'AB':
            j=json.load(open(DIR + f'/v_{W}_{mode}_{rep}.json'))
            e,n=err(DIR + f'/v_{W}_{mode}_{rep}.csv')
            print(f"| {W} | {'--phase-barriers' if mode=='barriers' else 'overlapped'} | {rep} | {e*100:.1f}% ({n} cand.) | {j['median_tau']:.3f} | {j['top_is_best_fraction']*100:.0f}% | {j['top_within_fraction']*100:.0f}% | " + (f"{nf[0]*100:.1f}%, {nf[1]:.3f}, {nf[2]}/{nf[3]} |" if rep=='A' else '|'))
