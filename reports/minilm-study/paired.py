# Paired findings across the tasks whose runs are complete, from records/ alone:
#   cd reports/minilm-study/records && python3 ../paired.py > ../paired-mrpc-stsb-cola.md
# Primary metric per task as record.json names it (MRPC accuracy, STS-B Pearson, CoLA MCC), x100.
import json,glob,statistics as st,collections,sys
R={}
for f in glob.glob('*/record.json'):
    r=json.load(open(f)); s=r['spec']; res=r['result']
    if res['status']!='completed': continue
    R[r['id']]=100*res['metrics'][res['primary_metric']]
def key(t,rest,s): return f"{t}-{rest}-s{s}"
def pair(a,b,tasks=('mrpc','stsb','cola')):
    d=[];w=t_=l=0
    for t in tasks:
        for s in range(3):
            x=R.get(key(t,a,s)); y=R.get(key(t,b,s))
            if x is None or y is None: continue
            d.append(x-y); w+=x>y+1e-9; l+=x<y-1e-9; t_+=abs(x-y)<=1e-9
    if not d: return None
    q=st.quantiles(d,n=4) if len(d)>1 else [d[0]]*3
    return f"{w}/{t_}/{l} (n={len(d)}) median {st.median(d):+.1f}, IQR [{q[0]:+.1f}, {q[2]:+.1f}]"
print("| comparison | budget | wins/ties/losses (n), median diff, IQR |\n|---|---|---|")
for b in ['1000','2500','5000','10000','20000']:
    print(f"| U-BitFit − random U | {b} | {pair(f'bitfit-u{b}-mean-same',f'bitfit-u{b}-random-same')} |")
for b in ['1000','2500','5000','10000','20000']:
    print(f"| S-BitFit − random S | {b} | {pair(f'bitfit-s{b}-mean-same',f'bitfit-s{b}-random-same')} |")
for b in ['1000','2500','5000','10000','20000']:
    print(f"| U-BitFit − S-BitFit | {b} | {pair(f'bitfit-u{b}-mean-same',f'bitfit-s{b}-mean-same')} |")
print(f"| U-MaM − S-MaM | 270912 | {pair('mam16-u270912-mean-same','mam16-s270912-mean-same')} |")
print(f"| U-MaM − MaM (rank 8) | 270912 | {pair('mam16-u270912-mean-same','mam')} |")
print(f"| S-MaM − MaM (rank 8) | 270912 | {pair('mam16-s270912-mean-same','mam')} |")
print(f"| U-BitFit 20k − BitFit | 20000 | {pair('bitfit-u20000-mean-same','bitfit-maximal')} |")
print()
print("| task | Full FT | BitFit | LoRA | MaM | MaM-16 | S-MaM | U-MaM |\n|---|---|---|---|---|---|---|---|")
for t in ('mrpc','stsb','cola'):
    row=[]
    for m in ['full','bitfit-maximal','lora','mam','mam16-maximal','mam16-s270912-mean-same','mam16-u270912-mean-same']:
        v=[R[key(t,m,s)] for s in range(3) if key(t,m,s) in R]
        row.append(f"{st.median(v):.1f} (n={len(v)})" if v else "—")
    print(f"| {t} | "+" | ".join(row)+" |")
